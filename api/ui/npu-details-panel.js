// One NPU node in detail: models with load/unload, inference time and throughput, memory, queues, and
// the utilization history chart (uPlot). Polls the node's details while open.
import { describe, enc, get, post } from "./api.js";
import { ago, deviceOf, duration, hostMemory, num, pct } from "./format.js";
import { POLL_MS } from "./poll.js";

const { markRaw } = Vue;

export const NPUDetailsPanel = {
  name: "NPUDetailsPanel",
  props: { node: Object, isAdmin: Boolean, now: Number },
  emits: ["close", "changed"],
  data() {
    return { details: null, error: null, pending: {}, actionError: "", timer: null };
  },
  computed: {
    device() { return deviceOf(this.node); },
    samples() { return this.details ? this.details.history.length : 0; },
    workerMemory() {
      // The workers' own resident memory (their heartbeats), next to the machine's total.
      const bytes = this.details && this.details.workerMemoryBytes;
      return bytes == null ? "—" : num(bytes / 2 ** 30, 2, " GB");
    },
    workerMemoryTitle() {
      if (!this.details || !this.details.workers) return "";
      return this.details.workers.map((w) => {
        const caches = Object.entries(w.kvCache || {}).map(([m, c]) =>
          `${m} KV cache ${num(c.allocated_bytes / 2 ** 20, 0)} of ${num(c.configured_bytes / 2 ** 20, 0)} MB`);
        return [`${w.workerId}: ${w.rssBytes == null ? "—" : num(w.rssBytes / 2 ** 20, 0, " MB")}`, ...caches]
          .join(", ");
      }).join("\n");
    },
  },
  async mounted() {
    await this.load();
    this.timer = setInterval(() => this.load(), POLL_MS);
    this.resize = new ResizeObserver(() => this.chart && this.chart.setSize(this.size()));
    this.resize.observe(this.$refs.chartBox);
  },
  beforeUnmount() {
    clearInterval(this.timer);
    if (this.resize) this.resize.disconnect();
    if (this.chart) this.chart.destroy();
  },
  methods: {
    ago, duration, hostMemory, num, pct,
    async load() {
      try {
        this.details = await get(`api/nodes/${enc(this.node.id)}/npu/details`);
        this.error = null;
        this.settle();
        this.draw();
      } catch (error) {
        this.error = error;
      }
    },
    settle() {
      // A load or unload is pending until the node's workers report the change.
      for (const m of this.details.models) {
        const want = this.pending[m.name];
        if (want && (want.load === m.loaded)) delete this.pending[m.name];
      }
    },
    state(model) {
      const want = this.pending[model.name];
      if (want && Date.now() - want.at > 30000) return "asked; not applied yet";
      if (want) return want.load ? "loading…" : "unloading…";
      if (model.wanted === false && model.loaded) return "unloading…";
      if (model.wanted === true && !model.loaded && this.node.status === "online" && this.node.models) {
        return "loading…";
      }
      return model.loaded ? "loaded" : "not loaded";
    },
    async setLoaded(model, load) {
      this.actionError = "";
      try {
        await post(`api/nodes/${enc(this.node.id)}/models/${enc(model.name)}/${load ? "load" : "unload"}`);
        this.pending = { ...this.pending, [model.name]: { load, at: Date.now() } };
        this.$emit("changed");
      } catch (error) {
        this.actionError = describe(error);
      }
    },
    queue(name) {
      const q = this.details && this.details.queueDepth[name];
      return q ? `${q.interactive} / ${q.bulk}` : "—";
    },
    size() {
      return { width: Math.max(200, this.$refs.chartBox.clientWidth), height: 180 };
    },
    draw() {
      const history = this.details.history;
      const data = [history.map((s) => s[0]), history.map((s) => s[1])];
      // At least the last five minutes on the time axis (an empty point in front), so a few samples do
      // not stretch over an axis of uPlot's choosing.
      if (history.length && history[0][0] > history[history.length - 1][0] - 300) {
        data[0].unshift(history[history.length - 1][0] - 300);
        data[1].unshift(null);
      }
      if (this.chart) {
        this.chart.setData(data);
        return;
      }
      if (!history.length) return;
      this.chart = markRaw(new uPlot({
        ...this.size(),
        scales: { y: { range: [0, 100] } },
        // 90 px between time labels at least: "10:31:20"-style labels need that much not to overlap.
        axes: [{ space: 90 }, { values: (u, ticks) => ticks.map((t) => `${t}%`) }],
        series: [{}, { label: "utilization", stroke: "#2f6fde", fill: "rgba(47,111,222,0.12)", width: 2,
                       value: (u, v) => (v == null ? "—" : `${v.toFixed(1)}%`) }],
        legend: { show: true },
      }, data, this.$refs.chartBox));
    },
  },
  template: `
  <section class="card details" data-test="details-panel" :data-node="node.id">
    <header>
      <h2>{{ node.name }} <span v-if="node.id !== node.name" class="muted small">{{ node.id }}</span>
        <span v-if="node.address" class="muted small">{{ node.address }}</span></h2>
      <span class="spacer"></span>
      <button class="link" @click="$emit('close')" aria-label="close details">Close</button>
    </header>
    <p v-if="error" class="error" role="alert">Details could not be read: {{ error.message }}</p>
    <div class="tiles">
      <div class="tile"><span class="label">Status</span><span><span class="dot" :class="node.status"></span>
        {{ node.status }}</span></div>
      <div class="tile"><span class="label">Device</span><span>{{ device || "—" }}</span></div>
      <div class="tile"><span class="label">Host memory</span>
        <span data-test="memory" :title="details ? hostMemory(details.memoryGB) : ''">{{ details
          ? num(details.memoryGB, 1, " GB") : "—" }}</span></div>
      <div class="tile"><span class="label">Worker memory</span>
        <span data-test="worker-memory" :title="workerMemoryTitle">{{ workerMemory }}</span></div>
      <!-- Queue depth and utilization: the same read as the node's card (the tab's poll), so the two never
           show different moments of a load that swings within seconds. -->
      <div class="tile"><span class="label">Queue depth</span>
        <span data-test="queue">{{ node.queueDepth }}</span></div>
      <div class="tile"><span class="label">Utilization</span>
        <span data-test="utilization">{{ node.status === "online" ? pct(node.utilization) : "—" }}</span></div>
      <div class="tile"><span class="label">Last health check</span><span>{{ node.lastHealthCheck ? ago(node.lastHealthCheck, now)
        : (node.status === "online" ? "live heartbeats" : "never") }}</span></div>
    </div>
    <h3>Models</h3>
    <div class="table-wrap"><table class="table cards" data-test="details-models">
      <thead><tr><th>Model</th><th>Task</th><th>State</th><th>Device</th><th>Inferences</th>
        <th>Mean inference time</th><th>Throughput</th><th>Queue (interactive / bulk)</th><th></th></tr></thead>
      <tbody v-if="details">
        <tr v-for="m in details.models" :key="m.name" :data-model="m.name">
          <td class="name" data-test="model-name" :title="m.name">{{ m.name }}</td>
          <td data-label="Task">{{ m.task }}</td>
          <td data-label="State" data-test="model-state"><span class="chip" :class="{on: m.loaded}">{{ state(m) }}</span></td>
          <td data-label="Device">{{ m.device || "—" }}</td>
          <td data-label="Inferences" data-test="inferences">{{ m.inferences }}</td>
          <td data-label="Mean inference time" data-test="mean-time"
              :title="m.meanLatencyMs == null ? '' : m.meanLatencyMs + ' ms'">{{ duration(m.meanLatencyMs) }}</td>
          <td data-label="Throughput" data-test="throughput">{{ num(m.throughputPerS, 1, m.task === "generation" ? " tokens/s" : " texts/s") }}</td>
          <td data-label="Queue (interactive / bulk)">{{ queue(m.name) }}</td>
          <td class="actions">
            <button v-if="m.loaded" data-test="unload" :disabled="!isAdmin || !!pending[m.name]"
                    :title="isAdmin ? 'Unload from this node' : 'Admin only'" @click="setLoaded(m, false)">Unload</button>
            <button v-else data-test="load" :disabled="!isAdmin || !!pending[m.name]"
                    :title="isAdmin ? 'Load on this node' : 'Admin only'" @click="setLoaded(m, true)">Load</button>
          </td>
        </tr>
      </tbody>
    </table></div>
    <p v-if="details && !details.models.length" class="muted">No models are registered.</p>
    <template v-if="details && details.apps && details.apps.length">
      <h3>Apps <span class="muted small">work served here since the workers started: texts embedded and tokens
        generated</span></h3>
      <div class="table-wrap"><table class="table cards" data-test="details-apps">
        <thead><tr><th>App</th><th>Work served</th></tr></thead>
        <tbody><tr v-for="a in details.apps" :key="a.name" :data-app="a.name">
          <td class="name" data-test="app-name">{{ a.name === "-" ? "(no app)" : a.name }}</td>
          <td data-label="Work served" data-test="app-work">{{ a.work }}</td>
        </tr></tbody>
      </table></div>
    </template>
    <p v-if="actionError" class="error" role="alert">{{ actionError }}</p>
    <h3>Utilization history <span class="muted small">{{ samples }} {{ samples === 1 ? "sample" : "samples" }}, one every
      5 s, up to an hour</span></h3>
    <div ref="chartBox" class="chart" data-test="chart"></div>
    <p v-if="details && !samples" class="muted">No samples yet: the facade records one every 5 s while the node
      has live workers.</p>
  </section>`,
};
