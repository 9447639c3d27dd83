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

/** The NPU Workers tab's stats row, from the nodes the API lists with the npu-worker role. */
export function npuStats(npuNodes) {
  const online = npuNodes.filter((n) => n.status === "online");
  const loaded = npuNodes.reduce((sum, n) => sum + n.loadedModels.length, 0);
  const distinct = new Set(npuNodes.flatMap((n) => n.loadedModels)).size;
  const avg = online.length ? online.reduce((sum, n) => sum + n.utilization, 0) / online.length : null;
  return { nodes: npuNodes.length, online: online.length, totalModels: loaded, distinctModels: distinct,
           averageUtilization: avg };
}
