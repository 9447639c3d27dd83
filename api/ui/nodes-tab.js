// The Nodes tab: this facade's health, every registered node (any role), adding and removing nodes,
// and the model registry.
import { del, describe, post } from "./api.js";
import { ago, deviceOf, level, num, pct } from "./format.js";

export const NodesTab = {
  name: "NodesTab",
  props: { nodes: Array, health: Object, models: Object, loaded: Boolean, isAdmin: Boolean, now: Number },
  emits: ["changed"],
  data() {
    return { form: { name: "", address: "" }, formError: "", adding: false, removing: null, actionError: "" };
  },
  methods: {
    ago, deviceOf, level, num, pct,
    async add() {
      this.formError = "";
      const name = this.form.name.trim(), address = this.form.address.trim();
      if (!name) { this.formError = "A node needs a name."; return; }
      if (address && !/^https?:\/\//.test(address)) {
        this.formError = "The address is the node facade's base URL, starting with http:// or https://.";
        return;
      }
      this.adding = true;
      try {
        await post("api/fleet/nodes", address ? { name, address } : { name });
        this.form = { name: "", address: "" };
        this.$emit("changed");
      } catch (error) {
        this.formError = describe(error);
      } finally {
        this.adding = false;
      }
    },
    async remove(node) {
      this.actionError = "";
      try {
        await del(`api/fleet/nodes/${encodeURIComponent(node.id)}`);
        this.removing = null;
        this.$emit("changed");
      } catch (error) {
        this.actionError = describe(error);
      }
    },
  },
  template: `
  <section class="nodes-tab" data-test="nodes-tab">
    <div class="card facade" v-if="health" data-test="facade-health">
      <h2>This facade <span class="badge" :class="'status-' + health.status">{{ health.status }}</span></h2>
      <dl class="facts">
        <div><dt>Redis</dt><dd>{{ health.redis }}</dd></div>
        <div><dt>Live workers</dt><dd>{{ health.workers }}</dd></div>
        <div><dt>Device</dt><dd>{{ health.device_type || "—" }}</dd></div>
        <div><dt>Loaded models</dt><dd>{{ health.loaded_models.join(", ") || "none" }}</dd></div>
        <div><dt>Missing models</dt><dd>{{ health.missing_models.join(", ") || "none" }}</dd></div>
        <div><dt>Queue depth</dt><dd>{{ health.queue_depth }}</dd></div>
        <div><dt>Utilization</dt><dd>{{ pct(health.utilization) }}</dd></div>
        <div><dt>Host memory</dt><dd data-test="host-memory">{{ num(health.memory_gb, 1, " GB") }}</dd></div>
      </dl>
    </div>

    <div class="card">
      <h2>Nodes</h2>
      <p v-if="!loaded" class="muted">Loading…</p>
      <p v-else-if="!nodes.length" class="empty" data-test="no-nodes">No nodes yet. A worker registers its node
        when it starts; an admin can add a node by its facade's address below.</p>
      <div v-else class="table-wrap"><table class="table cards" data-test="nodes-table">
        <thead><tr><th>Node</th><th>Address</th><th>Roles</th><th>Status</th><th>Workers</th><th>Device</th>
          <th>Loaded models</th><th>Utilization</th><th></th></tr></thead>
        <tbody>
          <tr v-for="node in nodes" :key="node.id" :data-node="node.id">
            <td class="name" :title="node.name"><strong>{{ node.name }}</strong><div v-if="node.id !== node.name" class="muted small">{{ node.id }}</div></td>
            <td data-label="Address" class="small">{{ node.address || "—" }}</td>
            <td data-label="Roles"><span v-for="r in node.roles" :key="r" class="chip">{{ r }}</span>
                <span v-if="!node.roles.length" class="muted">none</span></td>
            <td data-label="Status"><span class="dot" :class="node.status"></span>{{ node.status }}</td>
            <td data-label="Workers">{{ node.workers }}</td>
            <td data-label="Device">{{ deviceOf(node) || "—" }}</td>
            <td data-label="Loaded models"><span v-for="m in node.loadedModels" :key="m" class="model-name"
                  data-test="loaded-model">{{ m }}</span><template v-if="!node.loadedModels.length">—</template></td>
            <td data-label="Utilization">{{ node.status === "online" ? pct(node.utilization) : "—" }}</td>
            <td class="actions">
              <template v-if="removing === node.id">
                <button class="danger" @click="remove(node)">Remove node</button>
                <button class="link" @click="removing = null">Cancel</button>
              </template>
              <button v-else :disabled="!isAdmin" :title="isAdmin ? 'Remove from the registry' : 'Admin only'"
                      @click="removing = node.id">Remove…</button>
            </td>
          </tr>
        </tbody>
      </table></div>
      <p v-if="actionError" class="error" role="alert">{{ actionError }}</p>
      <form class="inline-form" @submit.prevent="add" data-test="add-node">
        <h3>Add a node by address</h3>
        <input v-model="form.name" placeholder="name" :disabled="!isAdmin" aria-label="node name">
        <input v-model="form.address" placeholder="http://host:8081" :disabled="!isAdmin" aria-label="address">
        <button type="submit" :disabled="!isAdmin || adding" :title="isAdmin ? '' : 'Admin only'">Add node</button>
        <p v-if="formError" class="error" role="alert">{{ formError }}</p>
      </form>
    </div>

    <div class="card" v-if="models">
      <h2>Models</h2>
      <div class="table-wrap"><table class="table cards" data-test="models-table">
        <thead><tr><th>Model</th><th>Task</th><th>Loaded</th><th>Workers</th><th>Devices</th>
          <th>Queue (interactive / bulk)</th><th>Cloud fallback</th></tr></thead>
        <tbody>
          <tr v-for="m in models.models" :key="m.name">
            <td class="name" data-test="model-name" :title="m.name">{{ m.name }}</td>
            <td data-label="Task">{{ m.task }}</td><td data-label="Loaded">{{ m.loaded ? "yes" : "no" }}</td>
            <td data-label="Workers">{{ m.workers }}</td><td data-label="Devices">{{ m.devices.join(", ") || "—" }}</td>
            <td data-label="Queue (interactive / bulk)">{{ m.queue_depth.interactive }} / {{ m.queue_depth.bulk }}</td>
            <td data-label="Cloud fallback">{{ m.cloud_fallback ? "yes" : "no" }}</td>
          </tr>
        </tbody>
      </table></div>
    </div>
  </section>`,
};
