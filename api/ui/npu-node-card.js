// One NPU node: name, status dot, device badge, loaded models count, utilization bar, quick actions.
import { ago, deviceOf, hostMemory, level, pct } from "./format.js";

export const NPUNodeCard = {
  name: "NPUNodeCard",
  props: { node: Object, selected: Boolean, isAdmin: Boolean, now: Number },
  emits: ["details", "remove-role", "redetect"],
  data() { return { confirming: false }; },
  computed: {
    device() { return deviceOf(this.node); },
    detection() { return this.node.detection; },
    checked() {
      if (this.node.lastHealthCheck) return `checked ${ago(this.node.lastHealthCheck, this.now)}`;
      return this.node.status === "online" ? "reporting live" : "never checked";
    },
    dot() {
      if (this.detection && this.detection.status === "error" && this.node.status !== "online") return "error";
      return this.node.status;
    },
    placements() {
      // Where each model really runs, its engine, and the earlier devices that refused it (full text on hover).
      return Object.entries(this.node.placements || {}).map(([model, p]) => {
        const refused = Object.entries(p.refused || {});
        return { model, device: p.device, engine: p.engine,
                 refused: refused.map(([d]) => d + " refused").join(", "),
                 refusals: refused.map(([d, why]) => d + ": " + why).join("\n") };
      });
    },
    applying() {
      // The operator asked for other models than are loaded: the node's workers are applying it.
      const wanted = this.node.models;
      if (!wanted || this.node.status !== "online") return false;
      const loaded = this.node.loadedModels;
      return wanted.length !== loaded.length || wanted.some((m) => !loaded.includes(m));
    },
  },
  methods: { hostMemory, level, pct },
  template: `
  <article class="card node-card" :class="{selected}" :data-node="node.id" data-test="node-card">
    <header>
      <span class="dot" :class="dot" :title="node.status"></span>
      <h3 :title="node.name">{{ node.name }}</h3>
      <span class="badge device" data-test="device">{{ device || "unknown device" }}</span>
    </header>
    <p class="muted small" v-if="node.id !== node.name || node.address">
      <template v-if="node.id !== node.name">{{ node.id }}</template><template
        v-if="node.id !== node.name && node.address"> · </template>{{ node.address }}</p>
    <div class="row">
      <span><strong data-test="model-count">{{ node.loadedModels.length }}</strong>
        {{ node.loadedModels.length === 1 ? "model" : "models" }} loaded</span>
      <span class="muted">{{ node.workers }} {{ node.workers === 1 ? "worker" : "workers" }} ·
        queue {{ node.queueDepth }}</span>
    </div>
    <p class="small models-list" data-test="loaded-models">{{ node.loadedModels.join(", ") || "none loaded" }}
      <span v-if="applying" class="chip pending">applying…</span></p>
    <ul v-if="placements.length" class="small muted placements" data-test="placements">
      <li v-for="p in placements" :key="p.model" :title="p.refusals">{{ p.model }}: {{ p.device }}<template
        v-if="p.engine"> · {{ p.engine }}</template><template v-if="p.refused"> ({{ p.refused }})</template></li>
    </ul>
    <div class="bar" :title="'utilization ' + pct(node.utilization)">
      <div class="fill" :class="level(node.utilization)" :style="{width: Math.min(100, node.utilization) + '%'}"></div>
    </div>
    <div class="row small">
      <span data-test="utilization">{{ node.status === "online" ? pct(node.utilization) + " utilized" : "offline" }}</span>
      <span class="muted">{{ checked }}</span>
    </div>
    <p v-if="detection && detection.status === 'error'" class="error small" data-test="detection-error">
      Detection failed: {{ detection.error }}</p>
    <p v-else-if="detection && detection.status === 'pending'" class="muted small">Detecting capabilities…</p>
    <p v-else-if="node.capabilities" class="muted small" data-test="capabilities">
      detected: {{ node.capabilities.deviceType || "?" }}, {{ (node.capabilities.models || []).length }} models,
      {{ node.capabilities.maxConcurrent }} concurrent, {{ hostMemory(node.capabilities.memoryGB) }}</p>
    <footer class="actions">
      <button @click="$emit('details')" data-test="details">{{ selected ? "Hide details" : "Details" }}</button>
      <button v-if="detection && detection.status === 'error'" :disabled="!isAdmin"
              :title="isAdmin ? '' : 'Admin only'" @click="$emit('redetect')">Retry detection</button>
      <template v-if="confirming">
        <button class="danger" data-test="confirm-remove-role" @click="confirming = false; $emit('remove-role')">
          Remove role</button>
        <button class="link" @click="confirming = false">Cancel</button>
      </template>
      <button v-else data-test="remove-role" :disabled="!isAdmin" :title="isAdmin ? '' : 'Admin only'"
              @click="confirming = true">Remove role…</button>
    </footer>
  </article>`,
};
