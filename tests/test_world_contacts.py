"""Foot contacts: agree with ground truth on a synthetic walk, hysteresis does not flicker, bad settings raise."""

from __future__ import annotations

import numpy as np
import pytest

from body4d_core.errors import InputError
from body4d_core.world.contacts import ContactSettings, detect_contacts
from body4d_core.world.keypoints import CONTACT_INDEX
from body4d_core.testing.world import person


@pytest.mark.parametrize("kind", ["walk", "run"])
def test_contacts_match_ground_truth(kind):
    J, gt, _ = person(kind, 90)
    rng = np.random.default_rng(0)
    noisy = J + rng.normal(0, 0.004, J.shape)
    got = detect_contacts(noisy[None], np.ones((1, 90), bool), 30.0)[0]
    assert got.shape == (90, 4)
    assert (got == gt).mean() > 0.85
    assert got.any(0).all() and (~got).any(0).all()  # every point both touches and lifts


def test_standing_person_is_always_in_contact():
    J, gt, _ = person("clap", 40)
    got = detect_contacts(J[None], np.ones((1, 40), bool), 30.0)[0]
    assert gt.all() and got.all()


def test_hysteresis_holds_contact_through_threshold_noise():
    J, _, _ = person("clap", 60)
    J = J.copy()
    # heights alternate just above height_on and below height_off: once in contact, stays in contact
    J[20:, CONTACT_INDEX, 1] += np.where(np.arange(40) % 2 == 0, 0.06, 0.04)[:, None]
    got = detect_contacts(J[None], np.ones((1, 60), bool), 30.0)[0]
    assert got[:, 0].all()
    strict = detect_contacts(J[None], np.ones((1, 60), bool), 30.0,
                             settings=ContactSettings(height_on=0.05, height_off=0.05))[0]
    assert not strict[20:, 0].all()  # without a gap between on and off the flag flickers


def test_absent_frames_have_no_contact():
    J, _, _ = person("walk", 30)
    present = np.ones((1, 30), bool)
    present[0, 10:15] = False
    got = detect_contacts(J[None], present, 30.0)[0]
    assert not got[10:15].any()


def test_bad_settings_raise():
    with pytest.raises(InputError):
        ContactSettings(height_on=0.1, height_off=0.05)
    with pytest.raises(InputError):
        ContactSettings(stencil=0)


def test_knee_ik_keeps_bone_lengths():
    from body4d_core.world.smoother import knee_ik

    hip = np.array([[0.0, 0.9, 0.0]])
    knee = np.array([[0.0, 0.47, 0.08]])
    ankle = np.array([[0.0, 0.08, 0.0]])
    new_ankle = ankle + np.array([[0.03, 0.0, -0.04]])
    k = knee_ik(hip, knee, ankle, new_ankle)
    assert np.allclose(np.linalg.norm(k - hip, axis=-1), np.linalg.norm(knee - hip, axis=-1))
    assert np.allclose(np.linalg.norm(new_ankle - k, axis=-1), np.linalg.norm(ankle - knee, axis=-1))
    assert k[0, 2] > -0.04 + 0.05  # still bent forward, not flipped
