"""The NeRF's background: the prior's own when it has one, else what `nerf_background` says (learned or grey)."""

from __future__ import annotations

import pytest

from backend.scene.nerf import NeRFScene
from shared.settings import SettingsError, validate

SMALL = {"quality": "draft", "nerf_grid_levels": 2, "nerf_grid_log2_table": 8, "nerf_samples_per_ray": 8}


@pytest.mark.parametrize("choice, learned", [("learned", True), ("grey", False)])
def test_without_a_prior_background_the_setting_chooses(choice, learned):
    scene = NeRFScene.from_settings(validate({**SMALL, "nerf_background": choice}), None)
    assert (scene.background_mlp is not None) == learned
    if not learned:
        assert scene.background_colour.tolist() == [0.5, 0.5, 0.5]


def test_a_prior_background_wins_over_the_setting():
    scene = NeRFScene.from_settings(validate({**SMALL, "nerf_background": "learned"}), (0.2, 0.3, 0.4))
    assert scene.background_mlp is None
    assert scene.background_colour.tolist() == pytest.approx([0.2, 0.3, 0.4])


def test_an_unknown_background_names_the_choices():
    with pytest.raises(SettingsError, match="learned, grey"):
        validate({"nerf_background": "white"})
