"""Client-level DP's arithmetic: the accountant against dp-accounting, clipping, the private mean,
and the job's privacy settings refused with a clear 422 when they cannot hold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coordinator.errors import ApiError
from coordinator.privacy.accountant import epsilon_after, rounds_within
from coordinator.privacy.central_noise import clipped_delta, private_mean
from coordinator.privacy.settings import PrivacySettings, parse_privacy
from models.update_privacy import UpdatePrivacy, clip_update, delta_norm, server_norm_bound


def _tensors(seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"a": (scale * rng.standard_normal((4, 16))).astype(np.float32),
            "b": (scale * rng.standard_normal((16, 4))).astype(np.float32)}


@pytest.mark.parametrize("noise, rounds, rate", [(1.0, 1, 1.0), (0.8, 15, 1.0), (3.0, 40, 1.0), (1.1, 30, 0.05)])
def test_epsilon_equals_dp_accountings_for_the_same_events(noise, rounds, rate):
    """The accountant's epsilon is dp-accounting's RDP epsilon for ``rounds`` Gaussian mechanisms
    (Poisson-subsampled at ``rate`` when below 1), composed one event at a time here."""
    from dp_accounting import dp_event, rdp

    settings = PrivacySettings(mode="central", clip_norm=1.0, noise_multiplier=noise, sampling_rate=rate)
    accountant = rdp.RdpAccountant()
    for _ in range(rounds):
        event = dp_event.GaussianDpEvent(noise)
        accountant.compose(event if rate == 1.0 else dp_event.PoissonSampledDpEvent(rate, event))
    expected = accountant.get_epsilon(1e-5)
    assert epsilon_after(rounds, settings) == pytest.approx(expected, rel=1e-9)
    assert epsilon_after(0, settings) == 0.0


def test_epsilon_grows_with_rounds_and_the_budget_bisects_to_the_last_round_within_it():
    settings = PrivacySettings(mode="central", clip_norm=1.0, noise_multiplier=2.0, epsilon_budget=4.0)
    values = [epsilon_after(r, settings) for r in range(1, 30)]
    assert all(b > a for a, b in zip(values, values[1:]))
    last = rounds_within(settings, 1000)
    assert epsilon_after(last, settings) <= 4.0 < epsilon_after(last + 1, settings)
    assert rounds_within(PrivacySettings(mode="central", clip_norm=1.0, noise_multiplier=2.0), 7) == 7


def test_local_dp_accounts_each_devices_own_release_without_amplification():
    local = PrivacySettings(mode="local", clip_norm=1.0, noise_multiplier=2.0, sampling_rate=0.1)
    central = PrivacySettings(mode="central", clip_norm=1.0, noise_multiplier=2.0, sampling_rate=1.0)
    assert epsilon_after(5, local) == pytest.approx(epsilon_after(5, central))


def test_clipping_bounds_the_change_and_leaves_a_short_one_exactly_as_it_was():
    start = _tensors(0)
    long_change = {k: v + _tensors(1, 0.5)[k] for k, v in start.items()}
    clipped, norm = clip_update(long_change, start, clip_norm=0.3)
    assert norm == pytest.approx(delta_norm(long_change, start))
    assert delta_norm(clipped, start) <= 0.3
    # the direction is kept
    before = np.concatenate([(long_change[k] - start[k]).ravel() for k in start])
    after = np.concatenate([(clipped[k] - start[k]).ravel() for k in start])
    assert float(before @ after) / (np.linalg.norm(before) * np.linalg.norm(after)) > 0.999999
    short = {k: v + _tensors(2, 1e-4)[k] for k, v in start.items()}
    same, _ = clip_update(short, start, clip_norm=10.0)
    for key in start:
        np.testing.assert_array_equal(same[key], short[key])


def test_local_noise_has_the_promised_spread_and_stays_under_the_servers_bound():
    start = {"w": np.zeros((200, 200), dtype=np.float32)}
    trained = {"w": np.full((200, 200), 0.01, dtype=np.float32)}
    noised, _ = clip_update(trained, start, clip_norm=0.5, noise_multiplier=2.0, rng=np.random.default_rng(3))
    change = noised["w"].astype(np.float64)
    assert np.std(change) == pytest.approx(2.0 * 0.5, rel=0.02)
    assert delta_norm(noised, start) <= server_norm_bound(0.5, 2.0, change.size, local_noise=True)
    assert server_norm_bound(0.5, 2.0, change.size, local_noise=False) == pytest.approx(0.5 * 1.001)


def test_the_private_mean_adds_noise_of_z_c_to_the_sum_and_divides_by_the_expected_cohort():
    start = {"w": np.zeros((300, 300), dtype=np.float32)}
    deltas = [clipped_delta({"w": np.full((300, 300), v, dtype=np.float32)}, start, 1.0)[0] for v in (1e-3, 2e-3)]
    exact = private_mean(start, deltas, clip_norm=1.0, noise_multiplier=0.0, denominator=4)
    np.testing.assert_allclose(exact["w"], (3e-3 * 300 / 300) / 4 * np.ones((300, 300)) * 1, rtol=1e-4)
    noisy = private_mean(start, deltas, clip_norm=1.0, noise_multiplier=1.5, denominator=4,
                         rng=np.random.default_rng(0))
    noise = noisy["w"].astype(np.float64) - exact["w"]
    assert np.std(noise) == pytest.approx(1.5 * 1.0 / 4, rel=0.02)
    with pytest.raises(ValueError, match="clip before the mean"):
        private_mean(start, [{"w": np.full((300, 300), 1.0)}], clip_norm=1.0, noise_multiplier=1.0, denominator=1)


def test_the_server_clips_what_a_device_should_have_clipped():
    start = _tensors(0)
    sent = {k: v + _tensors(5, 0.2)[k] for k, v in start.items()}
    delta, scaled = clipped_delta(sent, start, 0.1)
    assert scaled and math.sqrt(sum(float(np.square(v).sum()) for v in delta.values())) == pytest.approx(0.1)


def test_the_device_reads_its_privacy_section_strictly():
    assert UpdatePrivacy.from_train({}) is None
    privacy = UpdatePrivacy.from_train({"privacy": {"clip_norm": 0.5, "noise_multiplier": 0.0}})
    assert (privacy.clip_norm, privacy.noise_multiplier) == (0.5, 0.0)
    for bad in ({"clip_norm": 0}, {"clip_norm": -1}, {"clip_norm": "1"}, {"clip_norm": True},
                {"clip_norm": 1, "noise_multiplier": -1}, {"clip_norm": 1, "extra": 2}, [1]):
        with pytest.raises(ValueError):
            UpdatePrivacy.from_train({"privacy": bad})


@pytest.mark.parametrize("body, strategy, message", [
    ({"mode": "secret", "clip_norm": 1, "noise_multiplier": 1}, "fedavg", "privacy.mode"),
    ({"mode": "central", "noise_multiplier": 1}, "fedavg", "privacy.clip_norm: is required"),
    ({"mode": "central", "clip_norm": 0, "noise_multiplier": 1}, "fedavg", "privacy.clip_norm"),
    ({"mode": "central", "clip_norm": 1, "noise_multiplier": 1, "delta": 0.5}, "fedavg", "privacy.delta"),
    ({"mode": "central", "clip_norm": 1, "noise_multiplier": 1, "sampling_rate": 1.5}, "fedavg",
     "privacy.sampling_rate"),
    ({"mode": "central", "clip_norm": 1, "noise_multiplier": 1, "epsilon": 3}, "fedavg", "epsilon"),
    ({"mode": "central", "clip_norm": 1, "noise_multiplier": 1}, "hetlora", "fedavg only"),
    ({"mode": "central", "clip_norm": 1, "noise_multiplier": 0.5, "epsilon_budget": 1.0}, "fedavg",
     "one round already spends"),
    ("central", "fedavg", "must be a JSON object"),
])
def test_privacy_settings_that_cannot_hold_are_refused_naming_the_field(body, strategy, message):
    with pytest.raises(ApiError) as caught:
        parse_privacy(body, strategy=strategy, rounds=10)
    assert caught.value.code == "invalid_field" and message in caught.value.message


def test_privacy_settings_round_trip_and_tell_the_device_only_what_it_needs():
    settings = parse_privacy({"mode": "local", "clip_norm": 0.2, "noise_multiplier": 1.5, "epsilon_budget": 50},
                             strategy="fedavg", rounds=10)
    assert PrivacySettings.from_dict(settings.to_dict()) == settings
    assert settings.device_section() == {"clip_norm": 0.2, "noise_multiplier": 1.5}
    central = parse_privacy({"mode": "central", "clip_norm": 0.2, "noise_multiplier": 1.5}, strategy="fedavg", rounds=1)
    assert central.device_section() == {"clip_norm": 0.2, "noise_multiplier": 0.0}


def test_the_shared_clipping_vectors_are_what_the_python_device_computes():
    """tests/protocol/update_clipping.json (the Android core's UpdateClippingTest reads it) still
    holds what models/update_privacy.clip_update gives."""
    import json
    from pathlib import Path

    vectors = json.loads((Path(__file__).resolve().parents[1] / "protocol" / "update_clipping.json").read_text())
    assert len(vectors["cases"]) >= 3
    for case in vectors["cases"]:
        start = {t["name"]: np.array(t["start"], dtype=np.float32).reshape(t["shape"]) for t in case["tensors"]}
        trained = {t["name"]: np.array(t["trained"], dtype=np.float32).reshape(t["shape"]) for t in case["tensors"]}
        clipped, norm = clip_update(trained, start, case["clip_norm"])
        assert norm == pytest.approx(case["norm_before"], rel=1e-12)
        for tensor in case["tensors"]:
            np.testing.assert_array_equal(clipped[tensor["name"]].ravel(), np.array(tensor["clipped"], dtype=np.float32))
