// The NPU Workers tab (seed): stats row, "Assign NPU Role" and "Refresh All", a card per node with the
// npu-worker role, the selected node's details, and the load-balancing form.
import { describe, enc, patch, post } from "./api.js";
import { AssignNPURoleModal } from "./assign-npu-role-modal.js";
import { NPU_ROLE, npuStats, pct } from "./format.js";
import { LoadBalancingForm } from "./load-balancing-form.js";
import { NPUDetailsPanel } from "./npu-details-panel.js";
import { NPUNodeCard } from "./npu-node-card.js";

export const NPUWorkersTab = {
  name: "NPUWorkersTab",
  components: { NPUNodeCard, NPUDetailsPanel, AssignNPURoleModal, LoadBalancingForm },
  props: { nodes: Array, modelNames: Array, loaded: Boolean, isAdmin: Boolean, now: Number, error: Object },
  emits: ["changed"],
  data() {
    return { selected: null, assigning: false, refreshing: false, actionError: "" };
  },
  computed: {
    npuNodes() { return this.nodes.filter((n) => n.roles.includes(NPU_ROLE)); },
    candidates() { return this.nodes.filter((n) => !n.roles.includes(NPU_ROLE)); },
    stats() { return npuStats(this.npuNodes); },
    selectedNode() { return this.npuNodes.find((n) => n.id === this.selected) || null; },
  },
  methods: {
    pct,
    async refreshAll() {
      // Everyone re-reads the fleet; an admin also re-runs capability detection on every NPU node.
      this.refreshing = true;
      this.actionError = "";
      try {
        if (this.isAdmin) {
          const results = await Promise.allSettled(
            this.npuNodes.filter((n) => n.address).map((n) => post(`api/fleet/nodes/${enc(n.id)}/detect`)));
          const failed = results.find((r) => r.status === "rejected");
          if (failed) this.actionError = `Detection: ${describe(failed.reason)}`;
        }
        this.$emit("changed");
      } finally {
        this.refreshing = false;
      }
    },
    async removeRole(node) {
      this.actionError = "";
      try {
        await patch(`api/fleet/nodes/${enc(node.id)}`, { roles: node.roles.filter((r) => r !== NPU_ROLE) });
        if (this.selected === node.id) this.selected = null;
        this.$emit("changed");
      } catch (error) {
        this.actionError = describe(error);
      }
    },
    async redetect(node) {
      this.actionError = "";
      try {
        await post(`api/fleet/nodes/${enc(node.id)}/detect`);
        this.$emit("changed");
      } catch (error) {
        this.actionError = describe(error);
      }
    },
    toggle(node) { this.selected = this.selected === node.id ? null : node.id; },
    assigned(node) { this.selected = node.id; this.$emit("changed"); },
  },
  template: `
  <section class="npu-tab" data-test="npu-workers-tab">
    <div class="stats" data-test="stats">
      <div class="stat card" title="Nodes with the npu-worker role, whatever their device"><span class="label"
           data-test="stat-nodes-label">Worker nodes</span>
        <span class="value" data-test="stat-nodes">{{ stats.nodes }}</span>
        <span class="muted small">{{ stats.online }} online ·
          <span data-test="stat-npus">{{ stats.npus }}</span> with an NPU</span></div>
      <div class="stat card"><span class="label">Total models</span>
        <span class="value" data-test="stat-models">{{ stats.totalModels }}</span>
        <span class="muted small">loaded across worker nodes · {{ stats.distinctModels }} distinct</span></div>
      <div class="stat card"><span class="label">Average utilization</span>
        <span class="value" data-test="stat-utilization">{{ pct(stats.averageUtilization) }}</span>
        <span class="muted small">over online worker nodes</span></div>
      <div class="stat-actions">
        <button class="primary" data-test="assign-role" :disabled="!isAdmin"
                :title="isAdmin ? 'Give a registered node the npu-worker role' : 'Admin only'"
                @click="assigning = true">Assign NPU Role</button>
        <button data-test="refresh-all" :disabled="refreshing" @click="refreshAll"
                :title="isAdmin ? 'Re-read the fleet and re-run capability detection' : 'Re-read the fleet'">
          {{ refreshing ? "Refreshing…" : "Refresh All" }}</button>
      </div>
    </div>
    <p v-if="actionError" class="error" role="alert">{{ actionError }}</p>

    <p v-if="!loaded" class="muted">Loading…</p>
    <div v-else-if="!npuNodes.length" class="card empty" data-test="no-npu-nodes">
      <h2>No worker nodes</h2>
      <p v-if="error">The fleet could not be read: see the message above.</p>
      <p v-else>No node has the npu-worker role. Start a worker (<code>npu-worker work</code>) on a node, or
        register a node by address on the Nodes tab and assign it the role here.</p>
    </div>
    <div v-else class="grid" data-test="node-grid">
      <NPUNodeCard v-for="node in npuNodes" :key="node.id" :node="node" :selected="node.id === selected"
                   :is-admin="isAdmin" :now="now" @details="toggle(node)" @remove-role="removeRole(node)"
                   @redetect="redetect(node)" />
    </div>

    <NPUDetailsPanel v-if="selectedNode" :key="selectedNode.id" :node="selectedNode" :is-admin="isAdmin"
                     :now="now" @close="selected = null" @changed="$emit('changed')" />

    <LoadBalancingForm :npu-nodes="npuNodes" :model-names="modelNames" :is-admin="isAdmin" />

    <AssignNPURoleModal v-if="assigning" :candidates="candidates" :now="now" @close="assigning = false"
                        @assigned="assigned" />
  </section>`,
};
