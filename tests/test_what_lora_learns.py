"""lora_edu.what_lora_learns: φ, the amplification factor and intruder dimensions on constructed and random inputs,
and the shared digits sweeps (shapes, what they score, the same batches as the batched runs), as notebook 09 uses them."""
import numpy as np
import pytest
import torch

from lora_edu import what_lora_learns as w
from lora_edu.data import load_digits_task


def orthonormal(n, k, seed):
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((n, k)))[0]


# φ ------------------------------------------------------------------------------------------------

def test_phi_of_a_subspace_with_itself_is_one_and_with_an_orthogonal_one_zero():
    q = orthonormal(20, 8, 0)
    a = np.diag([5.0, 4, 3, 2]) @ q[:, :4].T  # rows span q's first 4 columns, distinct singular values
    np.testing.assert_allclose(w.subspace_similarity(a, a).diagonal(), 1.0, atol=1e-10)
    b = q[:, 4:].T  # orthogonal to a's rows
    np.testing.assert_allclose(w.subspace_similarity(a, b), 0.0, atol=1e-12)
    # a rescaled, reordered copy spans the same space: φ(i = r, j = r) = 1
    assert w.subspace_similarity(a, 3 * a[::-1])[-1, -1] == pytest.approx(1.0)


def test_phi_counts_shared_directions_of_nested_subspaces():
    q = orthonormal(30, 6, 1)
    small = np.diag([3.0, 2, 1]) @ q[:, :3].T
    large = np.diag([6.0, 5, 4, 3, 2, 1]) @ q.T  # contains small's subspace as its top-3
    phi = w.subspace_similarity(small, large)
    assert phi.shape == (3, 6)
    assert phi[2, 2] == pytest.approx(1.0) and phi[2, 5] == pytest.approx(1.0)
    assert phi[0, 0] == pytest.approx(1.0)  # the strongest directions agree
    mixed = np.diag([3.0, 2, 1]) @ np.stack([q[:, 0], q[:, 4], q[:, 5]])  # shares one direction of large's top-3
    assert w.subspace_similarity(mixed, large)[2, 2] == pytest.approx(1 / 3)


def test_phi_of_random_subspaces_is_about_max_i_j_over_n():
    n, i, j = 64, 4, 16
    values = [w.subspace_similarity(orthonormal(n, i, s).T, orthonormal(n, j, 100 + s).T)[i - 1, j - 1]
              for s in range(200)]
    assert np.mean(values) == pytest.approx(w.expected_random_similarity(i, j, n), rel=0.1)
    assert w.expected_random_similarity(i, j, n) == 16 / 64
    assert w.expected_random_similarity(8, 8, 64) == 8 / 64


def test_phi_accepts_torch_and_rejects_bad_shapes():
    a = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(w.subspace_similarity(a, a.double().numpy()), w.subspace_similarity(a, a))
    with pytest.raises(ValueError, match="same length n"):
        w.subspace_similarity(np.ones((2, 5)), np.ones((2, 6)))
    with pytest.raises(ValueError, match="r <= n"):
        w.subspace_similarity(np.ones((7, 5)), np.ones((2, 5)))
    with pytest.raises(ValueError, match="2-D"):
        w.subspace_similarity(np.ones(5), np.ones((2, 5)))
    with pytest.raises(ValueError, match="i must be"):
        w.expected_random_similarity(0, 2, 10)
    with pytest.raises(ValueError, match="j must be"):
        w.expected_random_similarity(2, 11, 10)


# Amplification ------------------------------------------------------------------------------------

def weight(seed=0, d=40):
    """A weight with a clear spectrum: singular values 10, 9, ..., 1, then 0.01."""
    u, v = orthonormal(d, d, seed), orthonormal(d, d, seed + 1)
    sigma = np.concatenate([np.arange(10, 0, -1.0), np.full(d - 10, 0.01)])
    return u @ np.diag(sigma) @ v.T, u, v


def test_amplification_is_small_along_w_top_directions_and_large_along_weak_ones():
    w0, u, v = weight()
    aligned = 0.5 * u[:, :2] @ v[:, :2].T  # ΔW along W's two strongest directions
    weak = 0.5 * u[:, -2:] @ v[:, -2:].T   # ΔW along two of W's weakest directions
    # ‖ΔW‖_F = 0.5·√2; ‖Uᵀ W V‖_F = √(10² + 9²) along the strong pair, √(2·0.01²) along the weak one
    assert w.amplification_factor(aligned, w0, 2) == pytest.approx(0.5 * np.sqrt(2) / np.sqrt(181))
    assert w.amplification_factor(weak, w0, 2) == pytest.approx(0.5 * np.sqrt(2) / np.sqrt(0.0002))
    random = orthonormal(40, 2, 7) @ orthonormal(40, 2, 8).T
    factor = w.amplification_factor(random, w0, 2)
    assert w.amplification_factor(aligned, w0, 2) < factor < w.amplification_factor(weak, w0, 2)


def test_amplification_table_has_the_papers_rows():
    w0, u, v = weight()
    delta = 0.3 * u[:, 3:5] @ v[:, 3:5].T
    row = w.amplification_table(delta, w0, 2, seed=0)
    assert row["w"] == pytest.approx(np.sqrt(10 ** 2 + 9 ** 2))  # W's own top-2 directions
    assert row["delta"] == pytest.approx(np.sqrt(7 ** 2 + 6 ** 2))  # ΔW points along σ4 = 7 and σ5 = 6
    assert row["w_norm"] == pytest.approx(np.linalg.norm(w0)) and row["delta_norm"] == pytest.approx(0.3 * np.sqrt(2))
    assert row["factor"] == pytest.approx(row["delta_norm"] / row["delta"])
    assert row["random"] < row["delta"] < row["w"]
    assert w.amplification_table(delta, w0, 2, seed=1)["random"] != row["random"]  # the seed picks the directions


def test_projection_and_directions_check_their_input():
    w0, _, _ = weight()
    u, v = w.top_singular_directions(w0, 3)
    assert u.shape == (40, 3) and v.shape == (40, 3)
    np.testing.assert_allclose(u.T @ u, np.eye(3), atol=1e-10)
    ru, rv = w.random_directions(40, 30, 4, seed=2)
    assert ru.shape == (40, 4) and rv.shape == (30, 4)
    np.testing.assert_allclose(rv.T @ rv, np.eye(4), atol=1e-10)
    with pytest.raises(ValueError, match="r must be"):
        w.top_singular_directions(w0, 41)
    with pytest.raises(ValueError, match="same shape"):
        w.amplification_factor(np.ones((3, 4)), np.ones((4, 3)), 1)
    with pytest.raises(ValueError, match="u must be"):
        w.projection_norm(w0, u[:5], v)
    with pytest.raises(ValueError, match="infinite"):
        w.amplification_factor(np.eye(4)[:, ::-1] * [0, 0, 0, 1], np.diag([1.0, 0, 0, 0]), 1)


# Intruder dimensions -------------------------------------------------------------------------------

def test_a_fine_tune_along_pretrained_directions_has_no_intruders():
    w0, u, v = weight(3)
    tuned = w0 + u[:, :5] @ np.diag([1.0, -0.5, 0.3, 0.2, 0.1]) @ v[:, :5].T  # only rescales W's own directions
    assert w.intruder_dimensions(w0, tuned) == []
    np.testing.assert_allclose(w.max_cosine_to_base(w0, tuned), 1.0, atol=1e-6)


def test_a_planted_new_direction_is_found():
    w0, _, _ = weight(4)
    new_u, new_v = orthonormal(40, 1, 50), orthonormal(40, 1, 51)  # a random direction: far from all of W's
    tuned = w0 + 20 * new_u @ new_v.T  # stronger than σ1 = 10: the top singular vector of the fine-tuned weight
    assert w.intruder_dimensions(w0, tuned, top_k=10, epsilon=0.5)[:1] == [0]
    assert w.max_cosine_to_base(w0, tuned, top_k=1)[0] < 0.5
    weakly = w0 + 0.05 * new_u @ new_v.T  # too weak to enter the top 10: nothing found
    assert w.intruder_dimensions(w0, weakly) == []


def test_intruder_input_errors():
    w0, _, _ = weight()
    with pytest.raises(ValueError, match="epsilon"):
        w.intruder_dimensions(w0, w0, epsilon=0)
    with pytest.raises(ValueError, match="top_k"):
        w.max_cosine_to_base(w0, w0, top_k=41)
    with pytest.raises(ValueError, match="same shape"):
        w.max_cosine_to_base(w0, w0[:5])


# The shared sweeps -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tasks():
    return load_digits_task("mirrored"), load_digits_task("original")


def test_lora_sweep_shapes_scores_and_deltas(mlp, tasks):
    new, old = tasks
    sweep = w.lora_sweep(mlp, new, old, ranks=(1, 4), learning_rates=(1e-3, 1e-2), seeds=(0, 1), steps=15)
    assert sweep.accuracy.shape == sweep.loss.shape == sweep.old_accuracy.shape == (2, 2, 2)
    assert np.all((0 <= sweep.accuracy) & (sweep.accuracy <= 1)) and np.all(sweep.loss > 0)
    delta = sweep.deltas[4, 1]["fc2"]
    assert delta.shape == (2, 32, 32) and np.linalg.matrix_rank(delta[1]) <= 4
    assert sweep.a_factors[1, 0]["fc1"].shape == (2, 1, 64)
    assert not np.allclose(sweep.deltas[4, 0]["fc2"], sweep.deltas[4, 1]["fc2"])  # seeds differ
    assert sweep.best_lr(4) in (1e-3, 1e-2)
    # the frozen model alone scores the old task as the sweep reports
    with torch.no_grad():
        base = float((mlp(old.x_val).argmax(-1) == old.y_val).float().mean())
    assert sweep.base_old_accuracy == pytest.approx(base)
    with pytest.raises(ValueError, match="r=2 is not allowed"):
        sweep.best_lr(2)


def test_lora_sweep_bad_input(mlp, tasks):
    new, old = tasks
    with pytest.raises(ValueError, match="learning_rates"):
        w.lora_sweep(mlp, new, old, learning_rates=(0.0,), steps=1)
    with pytest.raises(ValueError, match="alpha"):
        w.lora_sweep(mlp, new, old, alpha=-1, steps=1)
    with pytest.raises(ValueError, match="target_modules"):
        w.lora_sweep(mlp, new, old, target_modules=("fc9",), steps=1)


def test_full_sweep_changes_every_weight_and_keeps_the_base(mlp, tasks):
    new, old = tasks
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    sweep = w.full_finetune_sweep(mlp, new, old, learning_rates=(1e-3, 1e-2), seeds=(0,), steps=15)
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items()), "the base model is not changed"
    assert sweep.accuracy.shape == (2, 1)
    delta = sweep.deltas[1e-2, 0]["fc2"]
    assert delta.shape == (32, 32) and np.linalg.matrix_rank(delta) > 4  # full fine-tuning is not low-rank
    assert np.linalg.norm(sweep.deltas[1e-2, 0]["fc1"]) > np.linalg.norm(sweep.deltas[1e-3, 0]["fc1"])
    assert sweep.best_lr() in (1e-3, 1e-2)
    with pytest.raises(ValueError, match="steps"):
        w.full_finetune_sweep(mlp, new, old, steps=0)


def test_target_module_sweep_on_a_tiny_gpt():
    from lora_edu.models import GPTConfig, TinyGPT
    torch.manual_seed(0)
    gpt = TinyGPT(GPTConfig(context=16, d_model=16, n_layers=1, n_heads=2, mlp_hidden=32)).eval()
    before = {k: v.clone() for k, v in gpt.state_dict().items()}
    ids = torch.randint(0, 20, (400,), generator=torch.Generator().manual_seed(1))
    val = (ids[:64].view(4, 16), ids[1:65].view(4, 16))
    state = torch.random.get_rng_state()
    sweep = w.target_module_sweep(gpt, ids, val, {"q": (("q_proj",), 4), "mlp": (("up_proj", "down_proj"), 1)},
                                  learning_rates=(1e-3, 1e-2), seeds=(0, 1), steps=5, batch_size=4, context=16)
    assert torch.equal(torch.random.get_rng_state(), state), "the global random state is untouched"
    assert all(torch.equal(before[k], v) for k, v in gpt.state_dict().items()), "the base model is not changed"
    assert sweep.loss.shape == (2, 2, 2) and np.all(np.isfinite(sweep.loss))
    assert sweep.trainable == (4 * (16 + 16), 1 * (16 + 32) + 1 * (32 + 16)) and sweep.ranks == (4, 1)
    losses, lrs = sweep.best()
    assert losses.shape == (2, 2) and set(lrs) <= {1e-3, 1e-2}
    assert sweep.loss[0, 1].mean() < sweep.base_loss, "ten times the rate learns something in 5 steps"
    assert sweep.loss[0, 1, 0] != sweep.loss[0, 1, 1], "seeds differ"
    with pytest.raises(ValueError, match="configs must be"):
        w.target_module_sweep(gpt, ids, val, {})
    with pytest.raises(ValueError, match="rank of 'q'"):
        w.target_module_sweep(gpt, ids, val, {"q": (("q_proj",), 0)}, steps=1)
    with pytest.raises(ValueError, match="q_nope"):
        w.target_module_sweep(gpt, ids, val, {"q": (("q_nope",), 2)}, steps=1)
