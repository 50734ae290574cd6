"""Diffusion: schedules, q_sample against ε/v targets, the loss with an oracle model, seeded DDIM."""
import pytest
import torch

from handloom.model.diffusion import GaussianDiffusion, beta_schedule
from handloom.model.dit import DiT

torch.set_num_threads(1)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_beta_schedules(name):
    betas = beta_schedule(name, 1000)
    alpha_bar = torch.cumprod(1 - betas, 0)
    assert betas.shape == (1000,) and betas.gt(0).all() and betas.lt(1).all()
    assert alpha_bar.diff().lt(0).all() and alpha_bar[0] > 0.99 and alpha_bar[-1] < 1e-3
    if name == "linear":  # DDPM's endpoints
        assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    with pytest.raises(ValueError):
        beta_schedule("quadratic", 10)


def noised(diffusion, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, noise = torch.randn(8, 3, 4, 4, generator=g), torch.randn(8, 3, 4, 4, generator=g)
    t = torch.tensor([0, 1, 10, 100, 500, 900, 998, 999])
    return x0, noise, t, diffusion.q_sample(x0, t, noise)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_x0_and_eps_are_recovered_from_the_training_target(prediction, schedule):
    diffusion = GaussianDiffusion(schedule=schedule, prediction=prediction)
    x0, noise, t, x_t = noised(diffusion)
    x0_hat, eps_hat = diffusion.predict_x0_and_eps(x_t, t, diffusion.training_target(x0, t, noise))
    torch.testing.assert_close(eps_hat, noise, atol=1e-5, rtol=0)
    if prediction == "v":  # exact at every t, unlike ε, which divides by √ᾱ_t ≈ 0 at t = T-1
        torch.testing.assert_close(x0_hat, x0, atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(x0_hat[:5], x0[:5], atol=1e-4, rtol=0)


def test_q_sample_matches_the_closed_form():
    diffusion = GaussianDiffusion()
    x0, noise, t, x_t = noised(diffusion)
    alpha_bar = torch.cumprod(1 - beta_schedule("linear", 1000), 0)[t].view(-1, 1, 1, 1)
    expected = alpha_bar.sqrt() * x0.double() + (1 - alpha_bar).sqrt() * noise.double()
    torch.testing.assert_close(x_t.double(), expected, atol=1e-6, rtol=0)
    v = diffusion.training_target(x0, t, noise)
    torch.testing.assert_close(v, noise)  # eps prediction: the target is the noise


def oracle(diffusion: GaussianDiffusion, x0: torch.Tensor):
    """The perfect model for data that is the single point x0."""
    def model_fn(x_t, t, **cond):
        a, s = diffusion._coefficients(t, x_t)
        eps = (x_t - a * x0) / s
        return {"out": eps if diffusion.prediction == "eps" else a * eps - s * x0}
    return model_fn


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_training_loss_is_zero_for_the_oracle_and_one_for_a_zero_eps_model(prediction):
    diffusion = GaussianDiffusion(prediction=prediction)
    x0 = torch.rand(16, 3, 8, 8) * 2 - 1
    loss, out = diffusion.training_loss(oracle(diffusion, x0), x0, generator=torch.Generator().manual_seed(0))
    assert loss.item() < 1e-8 and out["out"].shape == x0.shape
    if prediction == "eps":
        loss, out = diffusion.training_loss(lambda x_t, t: torch.zeros_like(x_t), x0,
                                            generator=torch.Generator().manual_seed(0))
        assert loss.item() == pytest.approx(1.0, abs=0.05) and set(out) == {"out"}


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_loss_is_the_x0_error_weighted_by_min_snr_gamma(prediction):
    """A model whose x0 estimate is off by δ everywhere: with Min-SNR-γ the ε and the v loss both become
    δ² · min(SNR_t, γ) (Hang et al., eq. 7), whatever the prediction; without γ they differ."""
    delta, gamma, n = 0.1, 5.0, 64
    losses = {}
    for g in (gamma, None):
        diffusion = GaussianDiffusion(schedule="cosine", prediction=prediction, min_snr_gamma=g)
        x0 = torch.rand(n, 3, 4, 4) * 2 - 1
        perfect = oracle(diffusion, x0 + delta)
        losses[g] = diffusion.training_loss(perfect, x0, generator=torch.Generator().manual_seed(0))[0].item()
    t = torch.randint(0, 1000, (n,), generator=torch.Generator().manual_seed(0))
    alpha_bar = torch.cumprod(1 - beta_schedule("cosine", 1000), 0)[t]
    snr = alpha_bar / (1 - alpha_bar)
    assert losses[gamma] == pytest.approx(delta ** 2 * snr.clamp(max=gamma).mean().item(), rel=1e-4)
    unweighted = snr if prediction == "eps" else snr + 1  # what each loss is in x0 terms without γ
    assert losses[None] == pytest.approx(delta ** 2 * unweighted.mean().item(), rel=1e-4)
    assert losses[None] > 10 * losses[gamma]  # the clean end dominated the plain loss


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_with_the_oracle_lands_on_the_data(prediction, eta):
    diffusion = GaussianDiffusion(prediction=prediction)
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    sample = diffusion.ddim_sample(oracle(diffusion, x0), x0.shape, steps=10, eta=eta,
                                   generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sample, x0, atol=1e-4, rtol=0)


def test_ddim_timesteps_run_from_last_to_first():
    steps = GaussianDiffusion().ddim_timesteps(50)
    assert steps[0] == 999 and steps[-1] == 0 and len(steps) == 50 and steps.diff().lt(0).all()


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_same_seed_same_image_other_seed_other_image(eta):
    torch.manual_seed(0)
    model = DiT(8, 4, 3, 0, 32, 1, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    cond = torch.zeros(2, 0, 8, 8)
    reference, flag = torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long)
    diffusion = GaussianDiffusion()

    def draw(seed):
        return diffusion.ddim_sample(lambda x_t, t: model(x_t, t, cond, reference, cond, flag), (2, 3, 8, 8),
                                     steps=5, eta=eta, generator=torch.Generator().manual_seed(seed))

    first, again, other = draw(7), draw(7), draw(8)
    assert torch.equal(first, again)
    assert (first - other).abs().mean() > 0.1


def test_weighted_loss_weighs_each_element_and_keeps_the_uniform_scale():
    diffusion = GaussianDiffusion(prediction="v")
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    zero = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    uniform, _ = diffusion.training_loss(zero, x0, generator=g())
    ones, _ = diffusion.training_loss(zero, x0, generator=g(), weight=torch.full((4, 1, 8, 8), 3.0))
    torch.testing.assert_close(ones, uniform)  # a constant weight changes nothing
    # Weight 0 outside the left half: the loss is the left half's own mean squared target.
    half = torch.zeros(4, 1, 8, 8)
    half[..., :4] = 1.0
    left, _ = diffusion.training_loss(zero, x0, generator=g(), weight=half)
    g2 = g()  # the loss's own draws: t, then the noise
    t, noise = torch.randint(0, diffusion.num_steps, (4,), generator=g2), torch.randn(x0.shape, generator=g2)
    expected = diffusion.training_target(x0, t, noise)[..., :4].pow(2).mean()
    torch.testing.assert_close(left, expected)
