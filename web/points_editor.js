// Interactive points editor for the SAMBody4D_SAM3Points node (a DOM widget: works in the classic canvas and Nodes 2.0).
//
// How it gets frames: the node writes JPEG thumbnails to ComfyUI's temp folder on every run and reports them as
// its UI output `sambody4d_editor` (replayed when the result is cached) and as a `sambody4d.points.frames`
// message sent before the prompts are checked (so a first run with no clicks still loads the frames).
// What it writes: the prompt JSON (body4d_core/prompts.py) into the node's `prompts` widget, so workflows save
// and reload the clicks. Left click = positive point, right click (or shift+click) = negative point,
// left drag = box, alt/ctrl+click = delete the nearest point. "New person" starts the next object id.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import * as S from "./points_state.js";

const NODE_TYPE = "SAMBody4D_SAM3Points";
const EVENT = "sambody4d.points.frames";
const UI_KEY = "sambody4d_editor";
const HIT_RADIUS_PX = 12; // canvas pixels for deleting a point

function el(tag, attrs = {}, children = []) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "style") Object.assign(e.style, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function button(label, title, onclick) {
  return el("button", {
    title,
    onclick,
    style: { padding: "2px 6px", fontSize: "12px", cursor: "pointer", background: "var(--comfy-input-bg, #222)",
      color: "var(--input-text, #ddd)", border: "1px solid var(--border-color, #555)", borderRadius: "4px" },
  }, [label]);
}

class PointsEditor {
  constructor(node) {
    this.node = node;
    this.frames = null; // {subfolder, type, files, frame_indices, width, height, num_frames}
    this.images = new Map(); // position -> HTMLImageElement
    this.pos = 0; // position in frames.frame_indices
    this.active = 1;
    this.history = new S.History(100);
    this.error = null;
    this.state = S.emptyState();
    this.build();
    this.loadFromWidget();
  }

  get widget() {
    return this.node.widgets?.find((w) => w.name === "prompts");
  }

  get frame() {
    return this.frames ? this.frames.frame_indices[this.pos] : 0;
  }

  // ------------------------------------------------------------------ DOM

  build() {
    this.canvas = el("canvas", { style: { width: "100%", flex: "1 1 auto", minHeight: "200px", cursor: "crosshair",
      background: "#111", borderRadius: "4px" } });
    this.chips = el("div", { style: { display: "flex", gap: "4px", flexWrap: "wrap", alignItems: "center" } });
    this.slider = el("input", { type: "range", min: "0", max: "0", value: "0", style: { flex: "1 1 auto" } });
    this.label = el("span", { style: { fontSize: "12px", minWidth: "90px", textAlign: "right" } });
    this.status = el("div", { style: { fontSize: "11px", opacity: "0.8", whiteSpace: "nowrap", overflow: "hidden",
      textOverflow: "ellipsis" } });
    const toolbar = el("div", { style: { display: "flex", gap: "4px", flexWrap: "wrap", alignItems: "center" } }, [
      button("New person", "Start the next object id", () => this.newPerson()),
      button("Undo", "Undo the last change", () => this.undo()),
      button("Clear frame", "Remove every point on this frame", () => this.change(S.clearFrame(this.state, this.frame))),
      button("Delete person", "Remove the selected person everywhere", () => this.deletePerson()),
      this.chips,
    ]);
    const nav = el("div", { style: { display: "flex", gap: "4px", alignItems: "center" } }, [
      button("◀", "Previous frame with points", () => this.jump(-1)),
      this.slider,
      button("▶", "Next frame with points", () => this.jump(1)),
      this.label,
    ]);
    this.root = el("div", { style: { display: "flex", flexDirection: "column", gap: "4px", width: "100%",
      height: "100%", boxSizing: "border-box", color: "var(--input-text, #ddd)", fontFamily: "sans-serif" } },
    [toolbar, this.canvas, nav, this.status]);

    this.slider.addEventListener("input", () => { this.pos = Number(this.slider.value); this.draw(); });
    this.canvas.addEventListener("contextmenu", (e) => { e.preventDefault(); e.stopPropagation(); });
    this.canvas.addEventListener("pointerdown", (e) => this.onDown(e));
    this.canvas.addEventListener("pointermove", (e) => this.onMove(e));
    this.canvas.addEventListener("pointerup", (e) => this.onUp(e));
    this.canvas.addEventListener("wheel", (e) => {
      if (!this.frames) return;
      e.preventDefault();
      e.stopPropagation();
      this.setPos(this.pos + (e.deltaY > 0 ? 1 : -1));
    }, { passive: false });
    if (typeof ResizeObserver !== "undefined") new ResizeObserver(() => this.draw()).observe(this.canvas);
  }

  // ------------------------------------------------------------------ state <-> widget

  loadFromWidget() {
    const { state, error } = S.parseState(this.widget?.value);
    this.state = state;
    this.error = error;
    const ids = S.objectIds(state);
    if (!ids.includes(this.active)) this.active = ids.length ? ids[0] : 1;
    this.refresh();
  }

  change(next) {
    this.history.push(S.serializeState(this.state));
    this.state = next;
    this.error = null;
    this.writeWidget();
    this.refresh();
  }

  writeWidget() {
    const w = this.widget;
    if (!w) return;
    const text = S.serializeState(this.state);
    this.writing = true;
    try {
      w.value = text;
      w.callback?.(text);
    } finally {
      this.writing = false;
    }
    this.node.setDirtyCanvas?.(true, true);
  }

  undo() {
    const prev = this.history.pop();
    if (prev === null) return;
    this.state = S.parseState(prev).state;
    this.writeWidget();
    this.refresh();
  }

  newPerson() {
    const { state, id } = S.newObject(this.state);
    this.active = id;
    this.change(state);
  }

  deletePerson() {
    const ids = S.objectIds(this.state);
    if (!ids.includes(this.active)) return;
    const next = S.deleteObject(this.state, this.active);
    const left = S.objectIds(next);
    this.active = left.length ? left[0] : 1;
    this.change(next);
  }

  // ------------------------------------------------------------------ frames

  setFrames(info) {
    if (!info || !Array.isArray(info.files) || !info.files.length) return;
    const keep = this.frame;
    this.frames = info;
    this.images = new Map();
    this.slider.max = String(info.files.length - 1);
    this.pos = S.nearestPosition(info.frame_indices, keep);
    const size = this.state.image_size;
    if (!size || size[0] !== info.height || size[1] !== info.width) {
      // Remember the frame size the clicks refer to (the node rescales if the clip is resized later).
      this.state = S.withImageSize(this.state, info.height, info.width);
      this.writeWidget();
    }
    this.refresh();
  }

  imageAt(pos) {
    if (!this.frames) return null;
    let img = this.images.get(pos);
    if (!img) {
      img = new Image();
      const f = this.frames;
      img.src = api.apiURL(`/view?filename=${encodeURIComponent(f.files[pos])}&type=${encodeURIComponent(f.type)}` +
        `&subfolder=${encodeURIComponent(f.subfolder)}`);
      img.onload = () => { if (pos === this.pos) this.draw(); };
      img.onerror = () => { this.status.textContent = "Frames expired (server restarted?): run the node again."; };
      this.images.set(pos, img);
    }
    return img;
  }

  setPos(pos) {
    if (!this.frames) return;
    this.pos = Math.max(0, Math.min(this.frames.files.length - 1, pos));
    this.slider.value = String(this.pos);
    this.draw();
  }

  jump(dir) {
    if (!this.frames) return;
    const f = S.stepPromptedFrame(this.state, this.frames.frame_indices, this.frame, dir);
    if (f !== null) this.setPos(this.frames.frame_indices.indexOf(f));
  }

  // ------------------------------------------------------------------ input

  frameSize() {
    if (this.frames) return [this.frames.height, this.frames.width];
    return this.state.image_size ?? null;
  }

  // Where a pointer event falls: canvas rect, frame pixels (null outside the picture).
  locate(e) {
    const size = this.frameSize();
    if (!size) return null;
    const [h, w] = size;
    const r = this.canvas.getBoundingClientRect();
    const rect = S.fitRect(r.width, r.height, w, h);
    const cx = e.clientX - r.left;
    const cy = e.clientY - r.top;
    return { rect, cx, cy, p: S.canvasToFrame(cx, cy, rect, w, h), w, h };
  }

  onDown(e) {
    e.preventDefault();
    e.stopPropagation();
    const at = this.locate(e);
    if (!at) {
      this.status.textContent = "Run the node once to load the frames, then click on people.";
      return;
    }
    if (!at.p) return;
    this.drag = { button: e.button, shift: e.shiftKey, alt: e.altKey || e.ctrlKey || e.metaKey, start: at, now: at };
    this.canvas.setPointerCapture?.(e.pointerId);
  }

  onMove(e) {
    if (!this.drag) return;
    e.stopPropagation();
    this.drag.now = this.locate(e);
    if (this.isBoxDrag()) this.draw();
  }

  isBoxDrag() {
    return !!this.drag && this.isBoxDragOf(this.drag);
  }

  onUp(e) {
    const d = this.drag;
    if (!d) return;
    e.preventDefault();
    e.stopPropagation();
    d.now = this.locate(e) ?? d.now;
    this.drag = null;
    const { p, rect, w, h } = d.start;
    if (this.isBoxDragOf(d)) {
      // Left drag = a box for the selected person on this frame (clamped to the picture).
      const q = S.canvasToFrame(Math.min(Math.max(d.now.cx, rect.x), rect.x + rect.w),
        Math.min(Math.max(d.now.cy, rect.y), rect.y + rect.h), rect, w, h);
      this.change(S.setBox(this.state, this.active, this.frame, p.x, p.y, q.x, q.y));
      return;
    }
    if (d.alt) {
      const { state, removed } = S.removeNearestPoint(this.state, this.frame, p.x, p.y, HIT_RADIUS_PX / rect.scale);
      if (removed) this.change(state);
      return;
    }
    if (d.button !== 0 && d.button !== 2) return;
    const negative = d.button === 2 || d.shift;
    this.change(S.addPoint(this.state, this.active, this.frame, p.x, p.y, negative ? 0 : 1));
  }

  isBoxDragOf(d) {
    return d.button === 0 && !d.alt && !!d.now && Math.hypot(d.now.cx - d.start.cx, d.now.cy - d.start.cy) > 6;
  }

  // ------------------------------------------------------------------ drawing

  refresh() {
    this.renderChips();
    this.draw();
  }

  renderChips() {
    this.chips.replaceChildren();
    const ids = S.objectIds(this.state);
    if (!ids.includes(this.active)) ids.push(this.active);
    ids.sort((a, b) => a - b);
    for (const id of ids) {
      const chip = el("span", {
        title: `Person ${id}: click to select`,
        onclick: () => { this.active = id; this.refresh(); },
        style: { padding: "1px 6px", borderRadius: "8px", fontSize: "12px", cursor: "pointer", color: "#000",
          background: S.objectColor(id), outline: id === this.active ? "2px solid #fff" : "none" },
      }, [String(id)]);
      this.chips.append(chip);
    }
  }

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const cw = Math.max(1, Math.round(c.clientWidth * dpr));
    const ch = Math.max(1, Math.round(c.clientHeight * dpr));
    if (c.width !== cw || c.height !== ch) { c.width = cw; c.height = ch; }
    const ctx = c.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, cw, ch);
    ctx.scale(dpr, dpr);
    const size = this.frameSize();
    const total = S.countPoints(this.state);
    if (this.frames) {
      this.slider.value = String(this.pos);
      this.label.textContent = `frame ${this.frame} / ${this.frames.num_frames - 1}`;
    } else {
      this.label.textContent = "no frames";
    }
    const msg = this.error ?? (this.frames ? `Person ${this.active}: left click = positive, right click = negative, ` +
      `drag = box, alt+click = delete. ${total} point(s) on ${S.framesWithPrompts(this.state).length} frame(s).`
      : "Run the node once to load the frames (it reports 'no prompts' until you click).");
    this.status.textContent = msg;
    if (!size) return;
    const [h, w] = size;
    const rect = S.fitRect(c.clientWidth, c.clientHeight, w, h);
    const img = this.imageAt(this.pos);
    if (img && img.complete && img.naturalWidth) ctx.drawImage(img, rect.x, rect.y, rect.w, rect.h);
    else { ctx.fillStyle = "#333"; ctx.fillRect(rect.x, rect.y, rect.w, rect.h); }
    for (const b of S.boxesOnFrame(this.state, this.frame)) {
      ctx.strokeStyle = S.objectColor(b.id);
      ctx.lineWidth = 2;
      ctx.strokeRect(rect.x + Math.min(b.x0, b.x1) * rect.scale, rect.y + Math.min(b.y0, b.y1) * rect.scale,
        Math.abs(b.x1 - b.x0) * rect.scale, Math.abs(b.y1 - b.y0) * rect.scale);
    }
    if (this.isBoxDrag()) {
      const { start, now } = this.drag;
      ctx.setLineDash([5, 3]);
      ctx.strokeStyle = S.objectColor(this.active);
      ctx.lineWidth = 2;
      ctx.strokeRect(start.cx, start.cy, now.cx - start.cx, now.cy - start.cy);
      ctx.setLineDash([]);
    }
    for (const p of S.pointsOnFrame(this.state, this.frame)) {
      const x = rect.x + p.x * rect.scale;
      const y = rect.y + p.y * rect.scale;
      ctx.beginPath();
      ctx.arc(x, y, 7, 0, Math.PI * 2);
      ctx.fillStyle = "#fff";
      ctx.fill();
      ctx.beginPath();
      ctx.arc(x, y, 5, 0, Math.PI * 2);
      ctx.fillStyle = S.objectColor(p.id);
      ctx.fill();
      if (!p.label) {
        ctx.strokeStyle = "#fff";
        ctx.lineWidth = 2;
        ctx.beginPath();
        ctx.moveTo(x - 4, y - 4); ctx.lineTo(x + 4, y + 4);
        ctx.moveTo(x - 4, y + 4); ctx.lineTo(x + 4, y - 4);
        ctx.stroke();
      }
    }
  }
}

function matches(node, detail) {
  return !!detail && (S.sameNode(node.id, detail.display_node) || S.sameNode(node.id, detail.node));
}

app.registerExtension({
  name: "SAMBody4D.PointsEditor",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      const editor = new PointsEditor(this);
      this.sambody4dEditor = editor;
      this.addDOMWidget("points_editor", "sambody4d_points_editor", editor.root, {
        serialize: false,
        hideOnZoom: false,
        getValue: () => "",
        setValue: () => {},
        getMinHeight: () => 420,
      });
      const onFrames = (e) => { if (matches(this, e.detail)) editor.setFrames(e.detail); };
      const onExecuted = (e) => {
        if (matches(this, e.detail)) editor.setFrames(e.detail?.output?.[UI_KEY]?.[0]);
      };
      api.addEventListener(EVENT, onFrames);
      api.addEventListener("executed", onExecuted);
      const onRemoved = this.onRemoved;
      this.onRemoved = function () {
        api.removeEventListener(EVENT, onFrames);
        api.removeEventListener("executed", onExecuted);
        return onRemoved?.apply(this, arguments);
      };
      // Someone edited the JSON text by hand (advanced widget): show it.
      const prompts = this.widgets?.find((w) => w.name === "prompts");
      if (prompts) {
        const cb = prompts.callback;
        prompts.callback = function () {
          const out = cb?.apply(this, arguments);
          if (!editor.writing) editor.loadFromWidget();
          return out;
        };
      }
      const [w, h] = this.size;
      this.setSize([Math.max(w, 480), Math.max(h, 720)]);
      return r;
    };

    // A loaded workflow sets widget values after creation: re-read the prompts then.
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const r = onConfigure?.apply(this, arguments);
      this.sambody4dEditor?.loadFromWidget();
      return r;
    };
  },
});
