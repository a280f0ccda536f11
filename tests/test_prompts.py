"""Tests for body4d_core.prompts: editor JSON / core coordinate parsing, errors, preview drawing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from body4d_core.data import Prompts
from body4d_core.errors import InputError
from body4d_core.prompts import (OBJECT_COLORS, draw_prompts, object_color, parse_coordinate_string,
                                 parse_prompts, prompts_to_json)

SIZE = (60, 80)  # H, W
T = 10


def _doc(objects, **extra):
    return json.dumps({"version": 1, "objects": objects, **extra})


def test_editor_json_groups_by_object_and_frame():
    text = _doc([
        {"id": 2, "points": [{"frame": 3, "x": 10, "y": 20, "label": 1},
                             {"frame": 3, "x": 15.5, "y": 25, "label": 0},
                             {"frame": 0, "x": 1, "y": 2, "label": 1}]},
        {"id": 1, "points": [{"frame": 3, "x": 70, "y": 50, "label": 1}],
         "boxes": [{"frame": 5, "x0": 30, "y0": 40, "x1": 10, "y1": 5}]},
    ])
    p = parse_prompts(text, SIZE, T)
    assert isinstance(p, Prompts)
    assert p.obj_ids == [1, 2]
    assert p.frames == [0, 3, 5]
    keyed = {(it.obj_id, it.frame): it for it in p.items}
    assert set(keyed) == {(1, 3), (1, 5), (2, 0), (2, 3)}
    it = keyed[(2, 3)]
    np.testing.assert_allclose(it.points, [[10, 20], [15.5, 25]])
    assert it.labels.tolist() == [1, 0]
    assert it.box is None
    # box corners are sorted into x0<x1, y0<y1; a box-only frame is kept
    box_only = keyed[(1, 5)]
    assert box_only.points.shape == (0, 2)
    np.testing.assert_allclose(box_only.box, [10, 5, 30, 40])


def test_label_defaults_and_bools():
    text = _doc([{"id": 1, "points": [{"frame": 0, "x": 1, "y": 1}, {"frame": 0, "x": 2, "y": 2, "label": False}]}])
    it = parse_prompts(text, SIZE, T).items[0]
    assert it.labels.tolist() == [1, 0]


def test_empty_objects_are_dropped_but_other_objects_kept():
    text = _doc([{"id": 1, "points": []}, {"id": 3, "points": [{"frame": 1, "x": 5, "y": 5, "label": 1}]}])
    assert parse_prompts(text, SIZE, T).obj_ids == [3]


def test_core_coordinate_strings_merge_with_json():
    text = _doc([{"id": 1, "points": [{"frame": 0, "x": 5, "y": 5, "label": 1}]}])
    p = parse_prompts(text, SIZE, T, positive='[{"x": 10, "y": 11}, {"x": 12, "y": 13}]',
                      negative='[[40, 41]]', frame=4, obj_id=2)
    it = {(i.obj_id, i.frame): i for i in p.items}[(2, 4)]
    np.testing.assert_allclose(it.points, [[10, 11], [12, 13], [40, 41]])
    assert it.labels.tolist() == [1, 1, 0]
    # only coordinate strings, no JSON
    p2 = parse_prompts("", SIZE, T, positive='[{"x": 1, "y": 2}]')
    assert [(i.obj_id, i.frame) for i in p2.items] == [(1, 0)]


def test_coordinate_string_parser():
    assert parse_coordinate_string(None) == []
    assert parse_coordinate_string("  ") == []
    assert parse_coordinate_string('{"x": 3, "y": 4}') == [(3.0, 4.0)]
    with pytest.raises(InputError, match="must be"):
        parse_coordinate_string('[{"x": 3}]')
    with pytest.raises(InputError, match="not valid JSON"):
        parse_coordinate_string("[{x: 3}]", "positive coordinates")


def test_roundtrip_through_json_and_npz(tmp_path):
    text = _doc([{"id": 1, "points": [{"frame": 2, "x": 3.25, "y": 4, "label": 1},
                                      {"frame": 2, "x": 7, "y": 8, "label": 0}],
                  "boxes": [{"frame": 2, "x0": 1, "y0": 1, "x1": 20, "y1": 30}]},
                 {"id": 4, "points": [{"frame": 9, "x": 79, "y": 59, "label": 1}]}])
    p = parse_prompts(text, SIZE, T)
    again = parse_prompts(prompts_to_json(p), SIZE, T)
    for a, b in zip(p.items, again.items):
        assert (a.obj_id, a.frame) == (b.obj_id, b.frame)
        np.testing.assert_array_equal(a.points, b.points)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert (a.box is None) == (b.box is None)
    loaded = Prompts.load_npz(p.save_npz(tmp_path / "p.npz"))
    assert loaded.obj_ids == [1, 4] and loaded.frames == [2, 9]


def test_largest_object_id_is_accepted():
    text = _doc([{"id": 2**31 - 1, "points": [{"frame": 0, "x": 1, "y": 1}]}])
    assert parse_prompts(text, SIZE, T).obj_ids == [2**31 - 1]


def test_rescale_when_clicked_on_other_size_same_aspect():
    text = _doc([{"id": 1, "points": [{"frame": 0, "x": 40, "y": 30, "label": 1}]}], image_size=[120, 160])
    it = parse_prompts(text, SIZE, T).items[0]
    np.testing.assert_allclose(it.points, [[20, 15]])


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be an object"),
    (_doc([{"id": 0, "points": [{"frame": 0, "x": 1, "y": 1}]}]), "object ids start at 1"),
    (_doc([{"id": -3, "points": [{"frame": 0, "x": 1, "y": 1}]}]), "object ids start at 1"),
    (_doc([{"id": 1.5, "points": []}]), "whole number"),
    ('{"version": 1, "image_size": [60, 80], "objects": [{"id": 9223372036854775808, "points": []}]}', "too large"),
    ('{"version": 1, "image_size": [60, 80], "objects": [{"id": ' + "9" * 400 + ', "points": []}]}', "too large"),
    (_doc([{"id": 2**31, "points": [{"frame": 0, "x": 1, "y": 1}]}]), r"object ids go up to 2147483647, got 2147483648"),
    (_doc([{"id": 1e30, "points": [{"frame": 0, "x": 1, "y": 1}]}]), r"object ids go up to 2147483647"),
    (_doc([{"id": 1, "points": [{"frame": 10, "x": 1, "y": 1}]}]), r"frame 10 is past the clip \(10 frames, 0..9\)"),
    (_doc([{"id": 1, "points": [{"frame": -1, "x": 1, "y": 1}]}]), "past the clip"),
    (_doc([{"id": 1, "points": [{"frame": 0, "x": 81, "y": 1}]}]), r"point \(81, 1\) is outside the 80x60 frame"),
    (_doc([{"id": 1, "points": [{"frame": 0, "x": 5, "y": -0.5}]}]), "outside the 80x60 frame"),
    (_doc([{"id": 1, "points": [{"frame": 0, "x": "5", "y": 1}]}]), "must be a number"),
    (_doc([{"id": 1, "points": [{"frame": 0, "x": 5, "y": 1, "label": 2}]}]), "label must be 1"),
    (_doc([{"id": 1, "points": [{"frame": 0, "x": 5, "y": 1}]}, {"id": 1, "points": []}]), "appears twice"),
    (_doc([{"id": 1, "boxes": [{"frame": 0, "x0": 5, "y0": 1, "x1": 5, "y1": 9}]}]), "zero area"),
    (_doc([{"id": 1, "boxes": [{"frame": 0, "x0": 5, "y0": 1, "x1": 90, "y1": 9}]}]), "outside the 80x60"),
    (_doc([{"id": 1, "boxes": [{"frame": 0, "x0": 0, "y0": 0, "x1": 5, "y1": 5},
                               {"frame": 0, "x0": 1, "y0": 1, "x1": 6, "y1": 6}]}]), "two boxes"),
    (_doc([{"id": 1, "points": [{"frame": 0, "x": 5, "y": 1}]}], image_size=[60, 60]), "another aspect ratio"),
    (json.dumps({"version": 99, "objects": []}), "newer than this node"),
    (_doc([]), "no prompts given"),
    ("", "no prompts given"),
    (_doc([{"id": 2, "points": []}]), "no prompts given"),
])
def test_bad_input_gets_one_clear_error(text, message):
    with pytest.raises(InputError, match=message):
        parse_prompts(text, SIZE, T)


def test_bad_coordinate_inputs():
    with pytest.raises(InputError, match="outside the 80x60 frame"):
        parse_prompts("", SIZE, T, positive='[{"x": 100, "y": 1}]')
    with pytest.raises(InputError, match="past the clip"):
        parse_prompts("", SIZE, T, positive='[{"x": 1, "y": 1}]', frame=T)
    with pytest.raises(InputError, match="object ids start at 1"):
        parse_prompts("", SIZE, T, negative='[{"x": 1, "y": 1}]', obj_id=0)


def test_palette_wraps():
    assert object_color(1) == OBJECT_COLORS[0]
    assert object_color(len(OBJECT_COLORS) + 2) == OBJECT_COLORS[1]


def test_draw_prompts_marks_points_in_object_colours():
    frames = np.zeros((T, *SIZE, 3), np.uint8)
    text = _doc([{"id": 1, "points": [{"frame": 2, "x": 20, "y": 20, "label": 1}]},
                 {"id": 2, "points": [{"frame": 5, "x": 60, "y": 40, "label": 0}],
                  "boxes": [{"frame": 5, "x0": 5, "y0": 5, "x1": 30, "y1": 50}]}])
    p = parse_prompts(text, SIZE, T)
    out = draw_prompts(frames, p)
    assert out.shape == (2, *SIZE, 3) and out.dtype == np.uint8
    assert tuple(out[0, 20, 20]) == object_color(1)        # centre of the positive disc
    assert out[0].sum() > 0 and frames.sum() == 0           # input untouched
    # negative point: white cross at its centre, object colour beside it
    assert tuple(out[1, 40, 60]) == (255, 255, 255)
    assert tuple(out[1, 40, 61 + 1]) in {object_color(2), (255, 255, 255)}
    # box outline in object 2's colour on its left edge
    assert tuple(out[1, 25, 5]) == object_color(2)
    # explicit frame list: a frame without prompts stays black
    blank = draw_prompts(frames, p, [7])
    assert blank.shape == (1, *SIZE, 3) and blank.sum() == 0


def test_editor_frame_indices_and_size():
    from body4d_core.prompts import editor_frame_indices, editor_size

    assert editor_frame_indices(5, 200) == [0, 1, 2, 3, 4]
    idx = editor_frame_indices(1000, 11)
    assert idx[0] == 0 and idx[-1] == 999 and len(idx) == 11 and idx == sorted(set(idx))
    assert editor_frame_indices(9, 1) == [0]
    assert editor_frame_indices(9, 0) == list(range(9))
    with pytest.raises(InputError, match="no frames"):
        editor_frame_indices(0, 5)
    assert editor_size((1080, 1920), 512) == (288, 512)
    assert editor_size((350, 350), 512) == (350, 350)
    assert editor_size((100, 50), 0) == (100, 50)


# --------------------------------------------------------------------------- node (over the ComfyUI stand-in)



@pytest.fixture()
def points_node(pack):
    import importlib

    return importlib.import_module(f"{pack.__name__}.nodes.points")


def _files(info):
    import os

    import folder_paths

    return [os.path.join(folder_paths.get_temp_directory(), info["subfolder"], f) for f in info["files"]]


def test_points_node_outputs_prompts_preview_and_editor_frames(points_node):
    import os

    import torch
    from PIL import Image

    frames = torch.rand(6, 40, 64, 3)
    text = _doc([{"id": 1, "points": [{"frame": 4, "x": 10, "y": 20, "label": 1}]},
                 {"id": 2, "points": [{"frame": 1, "x": 50, "y": 30, "label": 0}]}])
    out = points_node.SAM3Points.execute(frames, text)
    prompts, preview = out.args
    assert type(prompts).__name__ == "Prompts" and prompts.obj_ids == [1, 2] and prompts.frames == [1, 4]
    assert preview.shape == (2, 40, 64, 3) and preview.dtype == torch.float32
    # frame 4 (second preview) carries object 1's colour at its positive point; frame 1's negative is crossed
    np.testing.assert_allclose(preview[1, 20, 10].numpy() * 255, object_color(1), atol=1)
    np.testing.assert_allclose(preview[0, 30, 50].numpy() * 255, (255, 255, 255), atol=1)
    info = out.ui[points_node.EDITOR_UI_KEY][0]
    assert info["frame_indices"] == list(range(6)) and (info["width"], info["height"]) == (64, 40)
    paths = _files(info)
    assert len(paths) == 6 and all(os.path.isfile(p) for p in paths)
    assert Image.open(paths[0]).size == (64, 40)


def test_points_node_api_coordinates_and_frame_cap(points_node):
    import torch

    frames = torch.rand(50, 30, 40, 3)
    out = points_node.SAM3Points.execute(frames, "", positive_coords='[{"x": 5, "y": 6}]',
                                         negative_coords='[{"x": 30, "y": 20}]', coords_frame=49,
                                         coords_object_id=3, editor_max_frames=5)
    (item,) = out.args[0].items
    assert (item.obj_id, item.frame, item.labels.tolist()) == (3, 49, [1, 0])
    info = out.ui[points_node.EDITOR_UI_KEY][0]
    assert info["frame_indices"] == [0, 12, 24, 37, 49] and len(info["files"]) == 5


def test_points_node_errors_still_deliver_editor_frames(points_node):
    import os

    import folder_paths
    import torch

    temp = os.path.join(folder_paths.get_temp_directory(), points_node.EDITOR_SUBFOLDER)
    before = set(os.listdir(temp)) if os.path.isdir(temp) else set()
    with pytest.raises(Exception, match="no prompts given") as err:
        points_node.SAM3Points.execute(torch.rand(3, 20, 20, 3), '{"version": 1, "objects": []}')
    assert type(err.value).__name__ == "InputError"
    assert len(set(os.listdir(temp)) - before) == 3  # thumbnails written before the check
    with pytest.raises(Exception, match="frame 5 is past the clip"):
        points_node.SAM3Points.execute(torch.rand(3, 20, 20, 3), _doc([{"id": 1, "points": [{"frame": 5, "x": 1, "y": 1}]}]))
    with pytest.raises(Exception, match=r"IMAGE batch \[T, H, W, 3\]"):
        points_node.SAM3Points.execute(torch.rand(20, 20, 3), "")


def test_points_node_schema(points_node):
    schema = points_node.SAM3Points.GET_SCHEMA()
    assert schema.node_id == "SAMBody4D_SAM3Points"
    assert [s.io_type for s in schema.outputs] == ["BODY4D_PROMPTS", "IMAGE"]
    assert [s.id for s in schema.inputs][:2] == ["frames", "prompts"]


def test_points_node_replaces_its_old_thumbnails(points_node):
    import os

    import folder_paths
    import torch

    frames = torch.rand(4, 16, 16, 3)
    first = points_node.write_editor_frames(frames, 10, node_id="12:3")
    other = points_node.write_editor_frames(frames, 10, node_id="5")
    second = points_node.write_editor_frames(frames, 10, node_id="12:3")
    folder = os.path.join(folder_paths.get_temp_directory(), points_node.EDITOR_SUBFOLDER)
    present = set(os.listdir(folder))
    assert all(f.startswith("n12-3_") for f in second["files"])
    assert set(second["files"]) <= present and set(other["files"]) <= present
    assert not set(first["files"]) & present  # the same node's earlier run was cleaned up
