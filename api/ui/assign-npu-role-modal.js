// Assign the npu-worker role: pick a registered node without it, preview what detection finds, confirm.
// The API probes the node's /health and /models (signed, bounded in time) when the role is assigned.
import { describe, enc, patch, post } from "./api.js";
import { NPU_ROLE, ago } from "./format.js";

export const AssignNPURoleModal = {
  name: "AssignNPURoleModal",
  props: { candidates: Array, now: Number },
  emits: ["close", "assigned"],
  data() {
    return { chosen: null, preview: null, busy: "", error: "", result: null };
  },
  computed: {
    node() {
      return (this.result && this.result.id === this.chosen) ? this.result
        : (this.preview && this.preview.id === this.chosen) ? this.preview
          : this.candidates.find((n) => n.id === this.chosen) || null;
    },
    detection() { return this.node && this.node.detection; },
    capabilities() { return this.node && this.node.capabilities; },
  },
  mounted() {
    this.onKey = (e) => { if (e.key === "Escape" && !this.busy) this.$emit("close"); };
    window.addEventListener("keydown", this.onKey);
    if (this.candidates.length === 1) this.chosen = this.candidates[0].id;
  },
  beforeUnmount() { window.removeEventListener("keydown", this.onKey); },
  watch: { chosen() { this.error = ""; this.result = null; } },
  methods: {
    ago,
    async detect() {
      this.busy = "detecting";
      this.error = "";
      try {
        this.preview = await post(`api/fleet/nodes/${enc(this.chosen)}/detect`);
      } catch (error) {
        this.error = describe(error);
      } finally {
        this.busy = "";
      }
    },
    async assign() {
      const node = this.node;
      this.busy = "assigning";
      this.error = "";
      try {
        this.result = await patch(`api/fleet/nodes/${enc(node.id)}`, { roles: [...node.roles, NPU_ROLE] });
        if (this.result.detection && this.result.detection.status === "ok") {
          this.$emit("assigned", this.result);
          this.$emit("close");
        } else {
          this.$emit("assigned", this.result); // the role is assigned; the node shows the failure until fixed
        }
      } catch (error) {
        this.error = describe(error);
      } finally {
        this.busy = "";
      }
    },
  },
  template: `
  <div class="backdrop" @click.self="busy || $emit('close')">
    <div class="modal card" role="dialog" aria-modal="true" aria-labelledby="assign-title" data-test="assign-modal">
      <header><h2 id="assign-title">Assign NPU Role</h2><span class="spacer"></span>
        <button class="link" :disabled="!!busy" @click="$emit('close')" aria-label="close">Close</button></header>
      <p v-if="!candidates.length" class="empty" data-test="no-candidates">Every registered node already has the
        npu-worker role. Add a node by its facade's address on the Nodes tab first.</p>
      <template v-else>
        <p class="muted">Nodes without the role. Assigning it probes the node's <code>/health</code> and
          <code>/models</code> with a signed request to detect what it can run.</p>
        <ul class="choices" data-test="candidates">
          <li v-for="n in candidates" :key="n.id">
            <label><input type="radio" name="node" :value="n.id" v-model="chosen" :disabled="!!busy">
              <strong>{{ n.name }}</strong> <span class="muted small">{{ n.id }} · {{ n.address || "no address" }}</span>
              <span class="dot" :class="n.status"></span><span class="small">{{ n.status }}</span></label>
          </li>
        </ul>
        <div v-if="node" class="preview" data-test="preview">
          <h3>Detection</h3>
          <p v-if="busy" class="muted" data-test="detection-status">
            {{ busy === "assigning" ? "Assigning the role and detecting capabilities…" : "Detecting capabilities…" }}</p>
          <p v-else-if="!node.address" class="error" data-test="detection-status">This node has no address:
            detection cannot reach it. Give it one (Nodes tab) before assigning.</p>
          <p v-else-if="!detection" class="muted" data-test="detection-status">Not detected yet.</p>
          <p v-else-if="detection.status === 'not_configured'" class="error" data-test="detection-status">
            Detection is not configured on this facade: {{ detection.error }}</p>
          <p v-else-if="detection.status === 'error'" class="error" data-test="detection-status">
            Detection failed {{ ago(detection.at, now) }}: {{ detection.error }}</p>
          <p v-else class="ok" data-test="detection-status">Detected {{ ago(detection.at, now) }}.</p>
          <dl v-if="capabilities" class="facts" data-test="capabilities">
            <div><dt>Device</dt><dd>{{ capabilities.deviceType || "—" }}</dd></div>
            <div><dt>Models</dt><dd>{{ (capabilities.models || []).join(", ") || "none" }}</dd></div>
            <div><dt>Max concurrent</dt><dd>{{ capabilities.maxConcurrent }}</dd></div>
            <div><dt>Memory</dt><dd>{{ capabilities.memoryGB }} GB</dd></div>
            <div><dt>Utilization</dt><dd>{{ capabilities.utilization }}%</dd></div>
          </dl>
          <p v-if="result && result.detection && result.detection.status !== 'ok'" class="muted">The role is
            assigned; the node's card shows the failure until a detection succeeds (Retry detection).</p>
        </div>
        <p v-if="error" class="error" role="alert">{{ error }}</p>
        <footer class="actions">
          <button :disabled="!node || !node.address || !!busy || !!result" data-test="detect" @click="detect">
            Preview capabilities</button>
          <button class="primary" data-test="confirm-assign" :disabled="!node || !!busy || !!result"
                  @click="assign">Assign NPU Role</button>
          <button v-if="result" @click="$emit('close')">Done</button>
        </footer>
      </template>
    </div>
  </div>`,
};
