// The load-balancing setting: strategy and the model affinity editor (model -> nodes allowed to run it).
// Checked here for what the page can tell (empty or repeated rows), and by the API for the rest
// (unknown model or node, a node that does not serve the model): both kinds of error are shown.
import { describe, get, post } from "./api.js";

const STRATEGIES = [
  { value: "least-loaded", label: "Least loaded", help: "the live node with the lowest utilization" },
  { value: "round-robin", label: "Round robin", help: "live nodes in turn" },
  { value: "model-affinity", label: "Model affinity",
    help: "only the nodes listed for a model (least loaded among them); models not listed go anywhere" },
];

export const LoadBalancingForm = {
  name: "LoadBalancingForm",
  props: { npuNodes: Array, modelNames: Array, isAdmin: Boolean },
  data() {
    return { strategy: "least-loaded", rows: [], errors: [], saved: "", loadError: "", saving: false };
  },
  computed: {
    strategies: () => STRATEGIES,
    nodeIds() { return this.npuNodes.map((n) => n.id); },
  },
  async mounted() { await this.reload(); },
  methods: {
    async reload() {
      this.errors = [];
      this.saved = "";
      try {
        const setting = await get("api/npu/load-balancing");
        this.strategy = setting.strategy;
        this.rows = Object.entries(setting.modelAffinity).map(([model, nodes]) => ({ model, nodes: [...nodes] }));
        this.loadError = "";
      } catch (error) {
        this.loadError = describe(error);
      }
    },
    choices(row) {
      return [...new Set([...this.nodeIds, ...row.nodes])];
    },
    nameOf(id) {
      const node = this.npuNodes.find((n) => n.id === id);
      return node ? node.name : `${id} (not a worker node)`;
    },
    addRow() {
      const unused = this.modelNames.find((m) => !this.rows.some((r) => r.model === m)) || "";
      this.rows.push({ model: unused, nodes: [] });
    },
    validate() {
      const errors = [], seen = new Set();
      this.rows.forEach((row, i) => {
        const model = row.model.trim();
        if (!model) errors.push(`Row ${i + 1}: choose a model.`);
        else if (seen.has(model)) errors.push(`${model} is listed twice: one row per model.`);
        else if (!row.nodes.length) errors.push(`${model}: choose at least one node.`);
        seen.add(model);
      });
      return errors;
    },
    async save() {
      this.saved = "";
      this.errors = this.validate();
      if (this.errors.length) return;
      const modelAffinity = Object.fromEntries(this.rows.map((r) => [r.model.trim(), r.nodes]));
      this.saving = true;
      try {
        const stored = await post("api/npu/load-balancing", { strategy: this.strategy, modelAffinity });
        this.strategy = stored.strategy;
        this.saved = "Saved: routing uses it from now on.";
      } catch (error) {
        this.errors = [error.status === 422 ? `The API refused it: ${error.message}` : describe(error)];
      } finally {
        this.saving = false;
      }
    },
  },
  template: `
  <form class="card lb" @submit.prevent="save" data-test="load-balancing" novalidate>
    <h2>Load balancing</h2>
    <p v-if="loadError" class="error" role="alert">The setting could not be read: {{ loadError }}</p>
    <fieldset :disabled="!isAdmin">
      <div class="strategies">
        <label v-for="s in strategies" :key="s.value" class="strategy">
          <input type="radio" name="strategy" :value="s.value" v-model="strategy">
          <strong>{{ s.label }}</strong> <span class="muted small">{{ s.help }}</span>
        </label>
      </div>
      <h3>Model affinity <span v-if="strategy !== 'model-affinity'" class="muted small">(kept, used only with
        the model-affinity strategy)</span></h3>
      <p v-if="!rows.length" class="muted">No affinity: every model may run on any worker node.</p>
      <div v-for="(row, i) in rows" :key="i" class="affinity-row" data-test="affinity-row">
        <input v-model="row.model" list="lb-models" placeholder="model" aria-label="model">
        <span class="node-choices">
          <label v-for="id in choices(row)" :key="id" class="chip" :class="{warn: !nodeIds.includes(id)}">
            <input type="checkbox" :value="id" v-model="row.nodes"> {{ nameOf(id) }}</label>
          <span v-if="!choices(row).length" class="muted">no worker nodes to choose</span>
        </span>
        <button type="button" class="link" @click="rows.splice(i, 1)" aria-label="remove row">Remove</button>
      </div>
      <datalist id="lb-models"><option v-for="m in modelNames" :key="m" :value="m"></option></datalist>
      <ul v-if="errors.length" class="error" role="alert" data-test="lb-errors">
        <li v-for="e in errors" :key="e">{{ e }}</li></ul>
      <p v-if="saved" class="ok" data-test="lb-saved">{{ saved }}</p>
      <footer class="actions">
        <button type="button" @click="addRow" data-test="add-affinity">Add model</button>
        <button type="button" @click="reload">Reset</button>
        <button type="submit" class="primary" data-test="save-lb" :disabled="saving"
                :title="isAdmin ? '' : 'Admin only'">Save</button>
      </footer>
    </fieldset>
  </form>`,
};
