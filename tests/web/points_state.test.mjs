// node --test tests/web/ : pure logic of the points editor (web/points_state.js).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

// Load the browser module as a data: URL so no package.json / module-type flag is needed.
const src = readFileSync(fileURLToPath(new URL("../../web/points_state.js", import.meta.url)), "utf8");
const S = await import("data:text/javascript;base64," + Buffer.from(src).toString("base64"));

test("parse tolerates empty and bad text", () => {
  assert.deepEqual(S.parseState("").state, { version: 1, objects: [] });
  assert.equal(S.parseState(null).error, null);
  assert.match(S.parseState("{bad").error, /not valid/);
  assert.match(S.parseState("[1]").error, /'objects' list/);
  const { state } = S.parseState('{"objects":[{"id":0,"points":[]},{"id":2,"points":[{"frame":1,"x":3,"y":4}]}]}');
  assert.deepEqual(S.objectIds(state), [2]);
  assert.equal(state.objects[0].points[0].label, 1);
});

test("new person, points, serialize round trip", () => {
  let { state, id } = S.newObject(S.emptyState());
  assert.equal(id, 1);
  state = S.addPoint(state, 1, 12, 100.123, 80, 1);
  state = S.addPoint(state, 1, 12, 5, 6, 0);
  const r = S.newObject(state);
  assert.equal(r.id, 2);
  state = S.addPoint(r.state, 2, 0, 7, 8, 1);
  state = S.withImageSize(state, 350, 350);
  const text = S.serializeState(state);
  const doc = JSON.parse(text);
  assert.deepEqual(doc, {
    version: 1, image_size: [350, 350], objects: [
      { id: 1, points: [{ frame: 12, x: 100.12, y: 80, label: 1 }, { frame: 12, x: 5, y: 6, label: 0 }], boxes: [] },
      { id: 2, points: [{ frame: 0, x: 7, y: 8, label: 1 }], boxes: [] },
    ],
  });
  assert.deepEqual(S.parseState(text).state, state);
  assert.deepEqual(S.framesWithPrompts(state), [0, 12]);
  assert.equal(S.countPoints(state), 3);
});

test("functions never mutate their input", () => {
  const a = S.addPoint(S.emptyState(), 3, 1, 1, 1, 1);
  const before = JSON.stringify(a);
  S.addPoint(a, 3, 1, 2, 2, 1);
  S.clearFrame(a, 1);
  S.deleteObject(a, 3);
  S.removeNearestPoint(a, 1, 1, 1, 5);
  S.newObject(a);
  assert.equal(JSON.stringify(a), before);
  assert.throws(() => S.addPoint(a, 0, 1, 1, 1, 1), /start at 1/);
});

test("delete nearest point only within the radius and on the frame", () => {
  let s = S.addPoint(S.emptyState(), 1, 4, 10, 10, 1);
  s = S.addPoint(s, 2, 4, 20, 10, 0);
  s = S.addPoint(s, 1, 5, 19, 10, 1);
  assert.equal(S.removeNearestPoint(s, 4, 40, 40, 5).removed, false);
  const r = S.removeNearestPoint(s, 4, 18, 10, 5);
  assert.equal(r.removed, true);
  assert.deepEqual(S.pointsOnFrame(r.state, 4), [{ id: 1, x: 10, y: 10, label: 1 }]);
  assert.equal(S.pointsOnFrame(r.state, 5).length, 1);
});

test("clear frame and delete object", () => {
  let s = S.addPoint(S.emptyState(), 1, 4, 10, 10, 1);
  s = S.addPoint(s, 2, 5, 20, 10, 0);
  assert.deepEqual(S.framesWithPrompts(S.clearFrame(s, 4)), [5]);
  assert.deepEqual(S.objectIds(S.deleteObject(s, 1)), [2]);
});

test("geometry helpers map canvas clicks to frame pixels", () => {
  const rect = S.fitRect(400, 300, 350, 350);
  assert.deepEqual([rect.w, rect.h, rect.x, rect.y], [300, 300, 50, 0]);
  assert.deepEqual(S.canvasToFrame(50 + 150, 150, rect, 350, 350), { x: 175, y: 175 });
  assert.equal(S.canvasToFrame(10, 10, rect, 350, 350), null);
  assert.equal(S.nearestPosition([0, 10, 20, 30], 14), 1);
  let s = S.addPoint(S.emptyState(), 1, 10, 1, 1, 1);
  s = S.addPoint(s, 1, 30, 1, 1, 1);
  s = S.addPoint(s, 1, 25, 1, 1, 1); // not shown in the editor's frame list
  assert.equal(S.stepPromptedFrame(s, [0, 10, 20, 30], 10, 1), 30);
  assert.equal(S.stepPromptedFrame(s, [0, 10, 20, 30], 10, -1), null);
});

test("palette matches the Python one and wraps", () => {
  assert.equal(S.objectColor(1), "rgb(230, 25, 75)");
  assert.equal(S.objectColor(11), S.objectColor(1));
});

test("history is bounded", () => {
  const h = new S.History(2);
  h.push("a"); h.push("b"); h.push("c");
  assert.equal(h.size, 2);
  assert.equal(h.pop(), "c");
  assert.equal(h.pop(), "b");
  assert.equal(h.pop(), null);
});

test("execution ids match the node, also inside subgraphs", () => {
  assert.equal(S.sameNode(7, "7"), true);
  assert.equal(S.sameNode(7, "12:7"), true);
  assert.equal(S.sameNode(7, "17"), false);
  assert.equal(S.sameNode(7, "7:1"), false);
  assert.equal(S.sameNode(7, undefined), false);
});

test("boxes: one per object and frame, corners sorted", () => {
  let s = S.addPoint(S.emptyState(), 1, 3, 5, 5, 1);
  s = S.setBox(s, 1, 3, 50, 40, 10, 20.123);
  s = S.setBox(s, 1, 3, 60, 40, 10, 20);
  s = S.setBox(s, 2, 0, 1, 2, 3, 4);
  assert.deepEqual(S.boxesOnFrame(s, 3), [{ id: 1, frame: 3, x0: 10, y0: 20, x1: 60, y1: 40 }]);
  assert.deepEqual(S.pointsOnFrame(s, 3).length, 1);
  assert.deepEqual(S.objectIds(s), [1, 2]);
  assert.deepEqual(S.pointsOnFrame(s, 0), []);
  assert.deepEqual(S.framesWithPrompts(s), [0, 3]);
  assert.deepEqual(S.framesWithPrompts(S.clearFrame(s, 3)), [0]);
  assert.throws(() => S.setBox(s, 0, 0, 1, 2, 3, 4), /start at 1/);
});
