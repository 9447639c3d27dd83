// How often the page re-reads the fleet (and an open details panel its node).
export const POLL_MS = 2500;
