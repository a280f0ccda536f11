// Pure state logic of the SAM3 Points editor (no DOM, no ComfyUI imports), so `node --test` can check it.
// The state is the prompt JSON documented in body4d_core/prompts.py:
//   {version: 1, image_size: [H, W] | undefined, objects: [{id, points: [{frame, x, y, label}], boxes: [...]}]}
// Every function returns a new state and leaves its input untouched.

export const FORMAT_VERSION = 1;

// Same palette as body4d_core/palette.py OBJECT_COLORS (RGB), indexed by (id - 1) % length.
export const OBJECT_COLORS = [
  [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180],
  [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
];

export function objectColor(id) {
  const n = OBJECT_COLORS.length;
  const [r, g, b] = OBJECT_COLORS[(((Math.trunc(id) - 1) % n) + n) % n];
  return `rgb(${r}, ${g}, ${b})`;
}

export function emptyState() {
  return { version: FORMAT_VERSION, objects: [] };
}

function clone(state) {
  return JSON.parse(JSON.stringify(state));
}

// Parse the widget text; anything unreadable gives an empty state plus the reason.
export function parseState(text) {
  if (text == null || String(text).trim() === "") return { state: emptyState(), error: null };
  let doc;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    return { state: emptyState(), error: `prompt JSON is not valid: ${err.message}` };
  }
  if (doc === null || typeof doc !== "object" || Array.isArray(doc) || !Array.isArray(doc.objects ?? [])) {
    return { state: emptyState(), error: "prompt JSON must be an object with an 'objects' list" };
  }
  const state = { version: FORMAT_VERSION, objects: [] };
  if (Array.isArray(doc.image_size) && doc.image_size.length === 2) state.image_size = doc.image_size.map(Number);
  for (const obj of doc.objects ?? []) {
    if (!obj || !Number.isInteger(obj.id) || obj.id < 1) continue;
    state.objects.push({
      id: obj.id,
      points: Array.isArray(obj.points) ? obj.points.filter((p) => p && Number.isFinite(p.x) && Number.isFinite(p.y))
        .map((p) => ({ frame: Math.trunc(p.frame ?? 0), x: p.x, y: p.y, label: p.label === 0 || p.label === false ? 0 : 1 })) : [],
      boxes: Array.isArray(obj.boxes) ? obj.boxes.map((b) => ({ ...b })) : [],
    });
  }
  return { state, error: null };
}

export function serializeState(state) {
  const doc = { version: FORMAT_VERSION };
  if (state.image_size) doc.image_size = state.image_size;
  doc.objects = state.objects.map((o) => ({ id: o.id, points: o.points, boxes: o.boxes ?? [] }));
  return JSON.stringify(doc);
}

export function objectIds(state) {
  return state.objects.map((o) => o.id).sort((a, b) => a - b);
}

// A new, empty object with the next free id (ids start at 1); returns {state, id}.
export function newObject(state) {
  const next = clone(state);
  const id = next.objects.reduce((m, o) => Math.max(m, o.id), 0) + 1;
  next.objects.push({ id, points: [], boxes: [] });
  return { state: next, id };
}

export function addPoint(state, id, frame, x, y, label) {
  if (!Number.isInteger(id) || id < 1) throw new Error(`object ids start at 1, got ${id}`);
  const next = clone(state);
  let obj = next.objects.find((o) => o.id === id);
  if (!obj) {
    obj = { id, points: [], boxes: [] };
    next.objects.push(obj);
    next.objects.sort((a, b) => a.id - b.id);
  }
  obj.points.push({ frame: Math.trunc(frame), x: round2(x), y: round2(y), label: label ? 1 : 0 });
  return next;
}

function round2(v) {
  return Math.round(v * 100) / 100;
}

// Set (replace) the box of an object on a frame; corners are sorted and rounded.
export function setBox(state, id, frame, x0, y0, x1, y1) {
  if (!Number.isInteger(id) || id < 1) throw new Error(`object ids start at 1, got ${id}`);
  const next = addPoint(state, id, frame, 0, 0, 1); // ensures the object exists
  const obj = next.objects.find((o) => o.id === id);
  obj.points.pop();
  obj.boxes = (obj.boxes ?? []).filter((b) => (b.frame ?? 0) !== Math.trunc(frame));
  obj.boxes.push({ frame: Math.trunc(frame), x0: round2(Math.min(x0, x1)), y0: round2(Math.min(y0, y1)),
    x1: round2(Math.max(x0, x1)), y1: round2(Math.max(y0, y1)) });
  return next;
}

// Remove the point nearest to (x, y) on a frame, if within maxDist pixels; returns {state, removed}.
export function removeNearestPoint(state, frame, x, y, maxDist) {
  let best = null;
  state.objects.forEach((o, oi) => o.points.forEach((p, pi) => {
    if (p.frame !== frame) return;
    const d = Math.hypot(p.x - x, p.y - y);
    if (d <= maxDist && (best === null || d < best.d)) best = { oi, pi, d };
  }));
  if (best === null) return { state, removed: false };
  const next = clone(state);
  next.objects[best.oi].points.splice(best.pi, 1);
  return { state: next, removed: true };
}

export function deleteObject(state, id) {
  const next = clone(state);
  next.objects = next.objects.filter((o) => o.id !== id);
  return next;
}

export function clearFrame(state, frame) {
  const next = clone(state);
  for (const o of next.objects) {
    o.points = o.points.filter((p) => p.frame !== frame);
    o.boxes = (o.boxes ?? []).filter((b) => (b.frame ?? 0) !== frame);
  }
  return next;
}

export function withImageSize(state, height, width) {
  const next = clone(state);
  next.image_size = [height, width];
  return next;
}

// Points shown on one frame: [{id, x, y, label}].
export function pointsOnFrame(state, frame) {
  const out = [];
  for (const o of state.objects) for (const p of o.points) if (p.frame === frame) out.push({ id: o.id, x: p.x, y: p.y, label: p.label });
  return out;
}

export function boxesOnFrame(state, frame) {
  const out = [];
  for (const o of state.objects) for (const b of o.boxes ?? []) if ((b.frame ?? 0) === frame) out.push({ id: o.id, ...b });
  return out;
}

export function framesWithPrompts(state) {
  const s = new Set();
  for (const o of state.objects) {
    for (const p of o.points) s.add(p.frame);
    for (const b of o.boxes ?? []) s.add(b.frame ?? 0);
  }
  return [...s].sort((a, b) => a - b);
}

export function countPoints(state) {
  return state.objects.reduce((n, o) => n + o.points.length, 0);
}

// Position in the editor's frame list of the frame closest to `frame`.
export function nearestPosition(frameIndices, frame) {
  let best = 0;
  frameIndices.forEach((f, i) => { if (Math.abs(f - frame) < Math.abs(frameIndices[best] - frame)) best = i; });
  return best;
}

// Next/previous prompted frame that the editor can show (dir = +1 / -1), or null.
export function stepPromptedFrame(state, frameIndices, current, dir) {
  const shown = new Set(frameIndices);
  const frames = framesWithPrompts(state).filter((f) => shown.has(f));
  const cand = dir > 0 ? frames.filter((f) => f > current) : frames.filter((f) => f < current).reverse();
  return cand.length ? cand[0] : null;
}

// Map a point in canvas pixels to frame pixels given the drawn image rectangle; null if outside.
export function canvasToFrame(cx, cy, rect, width, height) {
  const x = ((cx - rect.x) / rect.w) * width;
  const y = ((cy - rect.y) / rect.h) * height;
  if (x < 0 || y < 0 || x > width || y > height) return null;
  return { x, y };
}

// The largest rectangle of the frame's aspect ratio centred in a canvas of cw x ch.
export function fitRect(cw, ch, width, height) {
  const s = Math.min(cw / width, ch / height);
  const w = width * s;
  const h = height * s;
  return { x: (cw - w) / 2, y: (ch - h) / 2, w, h, scale: s };
}

// Does an execution id (the node id, or an "outer:inner" path inside subgraphs) name this node?
export function sameNode(nodeId, execId) {
  if (execId == null) return false;
  const id = String(nodeId);
  const exec = String(execId);
  return exec === id || exec.endsWith(`:${id}`);
}

// Bounded undo history of serialized states.
export class History {
  constructor(limit = 100) {
    this.limit = limit;
    this.stack = [];
  }

  push(text) {
    this.stack.push(text);
    if (this.stack.length > this.limit) this.stack.shift();
  }

  pop() {
    return this.stack.length ? this.stack.pop() : null;
  }

  get size() {
    return this.stack.length;
  }
}
