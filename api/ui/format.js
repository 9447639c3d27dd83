// Small display helpers shared by the components.

export const NPU_ROLE = "npu-worker";

export function ago(when, now = Date.now() / 1000) {
  if (when == null) return "never";
  // The API writes times as ISO 8601 UTC ("2026-02-04T10:30:00Z"); unix seconds are still read.
  const unixSeconds = typeof when === "string" ? Date.parse(when) / 1000 : when;
  const s = Math.max(0, Math.round(now - unixSeconds));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

export function num(value, digits = 1, unit = "") {
  if (value == null || Number.isNaN(value)) return "—";
  return `${Number(value).toFixed(digits)}${unit}`;
}

/** A duration given in milliseconds: "412.3 ms" below a second, seconds past it ("7.18 s", "42.5 s"). */
export function duration(ms) {
  if (ms == null || Number.isNaN(ms)) return "—";
  const value = Number(ms);
  if (value < 1000) return `${value.toFixed(1)} ms`;
  const s = value / 1000;
  return `${s.toFixed(s < 10 ? 2 : s < 100 ? 1 : 0)} s`;
}

/** The machine's memory, labelled as such (workers' own memory is shown apart). */
export function hostMemory(gb) {
  return gb == null ? "—" : `host memory ${Number(gb).toFixed(1)} GB`;
}

export function pct(value) {
  return value == null ? "—" : `${Number(value).toFixed(1)}%`;
}

/** Bar colour class by utilization. */
export function level(utilization) {
  if (utilization >= 85) return "high";
  if (utilization >= 60) return "mid";
  return "low";
}

export function deviceOf(node) {
  return node.deviceType || (node.capabilities && node.capabilities.deviceType) || null;
}

/** The device type of a node with an NPU (the seed's vocabulary: intel-npu, nvidia-gpu, amd-gpu, cpu). */
export const NPU_DEVICE = "intel-npu";

/** The NPU Workers tab's stats row, from the nodes the API lists with the npu-worker role: every such node
 * is a worker node, whatever its device; those whose device is an NPU are counted apart. */
export function npuStats(npuNodes) {
  const online = npuNodes.filter((n) => n.status === "online");
  const loaded = npuNodes.reduce((sum, n) => sum + n.loadedModels.length, 0);
  const distinct = new Set(npuNodes.flatMap((n) => n.loadedModels)).size;
  const avg = online.length ? online.reduce((sum, n) => sum + n.utilization, 0) / online.length : null;
  const npus = npuNodes.filter((n) => deviceOf(n) === NPU_DEVICE).length;
  return { nodes: npuNodes.length, online: online.length, npus, totalModels: loaded, distinctModels: distinct,
           averageUtilization: avg };
}
