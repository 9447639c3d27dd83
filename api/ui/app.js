// The operator page's root: sign-in with an operator token, the two tabs, and polling the fleet every
// POLL_MS so the page stays current without a manual refresh.
import { ApiError, describe, get, token } from "./api.js";
import { NodesTab } from "./nodes-tab.js";
import { NPUWorkersTab } from "./npu-workers-tab.js";
import { POLL_MS } from "./poll.js";

const { createApp } = Vue;
const TABS = ["nodes", "npu-workers"];

function tabFromHash() {
  const tab = location.hash.replace(/^#/, "");
  return TABS.includes(tab) ? tab : "nodes";
}

const App = {
  name: "FleetOverview",
  components: { NodesTab, NPUWorkersTab },
  data() {
    return {
      signedIn: false, role: null, checking: false, tokenInput: "", signInError: "",
      tab: tabFromHash(),
      nodes: [], health: null, models: null, loaded: false,
      error: null, updated: null, now: Date.now() / 1000, timer: null, polling: false,
    };
  },
  computed: {
    isAdmin() { return this.role === "admin"; },
    errorText() { return this.error ? describe(this.error) : ""; },
    freshness() {
      // "live" only while reads succeed: with Redis down (or the facade gone) the page shows old state.
      const age = this.updated ? Math.max(0, Math.round(this.now - this.updated)) + " s ago" : null;
      if (this.redisDown) return "not live: Redis unreachable" + (age ? " · last read " + age : "");
      if (this.error) return "not live" + (age ? " · last read " + age : "");
      return age ? "live · updated " + age : "loading…";
    },
    redisDown() {
      return (this.error && this.error.code === "redis_unavailable") ||
        (this.health && this.health.redis === "unreachable");
    },
    modelNames() { return this.models ? this.models.available : []; },
  },
  async mounted() {
    window.addEventListener("hashchange", () => { this.tab = tabFromHash(); });
    if (token.get()) await this.check(token.get());
  },
  beforeUnmount() { clearInterval(this.timer); },
  methods: {
    async signIn() {
      const value = this.tokenInput.trim();
      if (!value) { this.signInError = "Paste an operator token (admin or viewer)."; return; }
      await this.check(value);
    },
    async check(value) {
      this.checking = true;
      this.signInError = "";
      token.set(value);
      try {
        const me = await get("api/whoami");
        if (me.role === "service") throw new ApiError(403, "forbidden", "a service identity is not an operator");
        this.role = me.role;
        this.signedIn = true;
        this.tokenInput = "";
        await this.poll();
        this.timer = setInterval(() => this.poll(), POLL_MS);
      } catch (error) {
        token.clear();
        this.signInError = error.status === 401 ? "This token is not accepted." : describe(error);
      } finally {
        this.checking = false;
      }
    },
    signOut(message = "") {
      clearInterval(this.timer);
      token.clear();
      Object.assign(this, { signedIn: false, role: null, nodes: [], health: null, models: null, loaded: false,
                            error: null, signInError: message });
    },
    show(tab) { location.hash = tab; this.tab = tab; },
    async poll() {
      if (this.polling || document.hidden) return;
      this.polling = true;
      try {
        const [nodes, health, models] = await Promise.allSettled(
          [get("api/fleet/nodes"), get("health"), get("models")]);
        // /health answers 503 with its usual body when nothing can serve: still a report.
        const healthBody = health.status === "fulfilled" ? health.value
          : (health.reason.body && health.reason.body.status ? health.reason.body : null);
        const failed = [nodes, health, models].find(
          (r) => r.status === "rejected" && !(r === health && healthBody));
        if (failed && failed.reason.status === 401) {
          this.signOut("The token is no longer accepted: sign in again.");
          return;
        }
        if (nodes.status === "fulfilled") this.nodes = nodes.value.nodes;
        if (healthBody) this.health = healthBody;
        if (models.status === "fulfilled") this.models = models.value;
        this.error = failed ? failed.reason : null;
        this.now = Date.now() / 1000;
        if (!failed) this.updated = this.now;
        this.loaded = true;
      } finally {
        this.polling = false;
      }
    },
  },
  template: `
  <div v-if="!signedIn" class="signin">
    <form class="card" @submit.prevent="signIn" data-test="signin">
      <h1>npu-worker · Fleet</h1>
      <p class="muted">Sign in with an operator token. An admin token may change the fleet; a viewer token
        may only look. The token stays in this tab's session storage until you sign out or close the tab.</p>
      <div class="hint small" data-test="token-hint">
        <p><strong>Where is the token?</strong> <code>npu-worker up</code> (or <code>serve</code>) generates an
          admin token in <code>credentials.json</code> in the state directory,
          <code>$NPU_STATE_DIR</code> (by default <code>~/.local/share/npu-worker</code>):</p>
        <pre>jq -r .admin_token "\${NPU_STATE_DIR:-$HOME/.local/share/npu-worker}/credentials.json"</pre>
        <p>When the facade is configured with <code>NPU_ADMIN_TOKENS</code> or <code>NPU_VIEWER_TOKENS</code>,
          use one of those instead (viewer tokens come only from <code>NPU_VIEWER_TOKENS</code>).</p>
      </div>
      <label>Operator token
        <input type="password" v-model="tokenInput" autocomplete="off" name="token" autofocus>
      </label>
      <p v-if="signInError" class="error" role="alert">{{ signInError }}</p>
      <button class="primary" type="submit" :disabled="checking">{{ checking ? "Checking…" : "Sign in" }}</button>
    </form>
  </div>
  <div v-else class="page">
    <header class="top">
      <h1>Fleet overview</h1>
      <nav class="tabs" role="tablist">
        <a role="tab" href="#nodes" :aria-selected="tab === 'nodes'" :class="{active: tab === 'nodes'}"
           @click.prevent="show('nodes')">Nodes</a>
        <a role="tab" href="#npu-workers" :aria-selected="tab === 'npu-workers'"
           :class="{active: tab === 'npu-workers'}" @click.prevent="show('npu-workers')">NPU Workers</a>
      </nav>
      <span class="spacer"></span>
      <span class="updated muted" data-test="updated">
        {{ freshness }}</span>
      <span class="badge role" data-test="role">{{ role }}</span>
      <button class="link" @click="signOut()">Sign out</button>
    </header>
    <p v-if="error || redisDown" class="banner error" role="alert" data-test="banner">
      {{ redisDown && !error ? "Redis is unreachable: workers and the fleet cannot be read. Retrying…" : errorText }}
      <span v-if="updated" class="muted"> Showing what was last read, {{ Math.round(now - updated) }} s ago.</span>
    </p>
    <p v-if="!isAdmin" class="banner info" data-test="viewer-note">Signed in as a viewer: changes are admin-only.</p>
    <main>
      <NodesTab v-if="tab === 'nodes'" :nodes="nodes" :health="health" :models="models" :loaded="loaded"
                :is-admin="isAdmin" :now="now" @changed="poll" />
      <NPUWorkersTab v-else :nodes="nodes" :model-names="modelNames" :loaded="loaded" :is-admin="isAdmin"
                     :now="now" :error="error" @changed="poll" />
    </main>
  </div>`,
};

createApp(App).mount("#app");
