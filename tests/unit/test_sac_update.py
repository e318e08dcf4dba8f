"""MBPO's SAC update (stacked twin critics, one gradient pass, fused Adam, one Polyak lerp)
against a reference written as RLlib's SAC computes it: separate critics, RLlib's squashed
Gaussian, its continuous loss, one backward pass and one Adam per optimiser, a Polyak step
per target network. No Ray, no Learner: the pure functions of the update."""

import copy
import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchSquashedGaussian
from ray.rllib.core.models.base import ENCODER_OUT
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

from mbmpo_ray.algorithm.mbpo.learner import FusedAdamSteps, sac_losses, squashed_gaussian_sample
from mbmpo_ray.algorithm.mbpo.rl_module import (
    MBPOTorchRLModule,
    StackedQ,
    stack_separate_critics,
    stacked_mlp,
)

OBS, START, ACT, B = 6, 1, 3, 64
GAMMA, TAU, LR, TARGET_ENTROPY = 0.99, 0.05, 3e-3, -3.0


def make_module(twin_q=True, hidden=(32, 32), activation="relu"):
    torch.manual_seed(0)
    cfg = dataclasses.asdict(DefaultModelConfig(fcnet_hiddens=list(hidden),
                                                fcnet_activation=activation))
    module = MBPOTorchRLModule(
        observation_space=gym.spaces.Box(-np.inf, np.inf, (OBS,), np.float32),
        action_space=gym.spaces.Box(-1.0, 1.0, (ACT,), np.float32),
        model_config=cfg | {"twin_q": twin_q, "mbpo_obs_start": START})
    module.make_target_networks()
    with torch.no_grad():  # targets apart from the critics, as after some training
        for p in module.target_qf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return module


def make_batch(seed):
    g = torch.Generator().manual_seed(seed)
    done = (torch.rand(B, generator=g) < 0.2).float()
    ones = torch.ones(B)
    return {Columns.OBS: torch.randn(B, OBS, generator=g),
            Columns.ACTIONS: torch.rand(B, ACT, generator=g) * 2 - 1,
            Columns.REWARDS: torch.randn(B, generator=g) * 5,
            Columns.NEXT_OBS: torch.randn(B, OBS, generator=g),
            Columns.TERMINATEDS: done, "n_step": ones, "weights": ones}


# ---------------------------------------------------------------------- reference
def separate_critics(stack: StackedQ) -> list[torch.nn.Sequential]:
    """The K critics of ``stack`` as separate ``Linear``/ReLU MLPs (RLlib's layout)."""
    nets = []
    for k in range(stack.k):
        layers = []
        for i, (w, b) in enumerate(zip(stack.weights, stack.biases, strict=True)):
            lin = torch.nn.Linear(w.shape[1], w.shape[2])
            with torch.no_grad():
                lin.weight.copy_(w[k].T)
                lin.bias.copy_(b[k, 0])
            layers.append(lin)
            if i < len(stack.weights) - 1:
                layers.append(torch.nn.ReLU())
        nets.append(torch.nn.Sequential(*layers))
    return nets


class RLlibReference:
    """RLlib's SAC update, transcribed: ``DefaultSACTorchRLModule._forward_train_continuous``
    with separate critics, ``SACTorchLearner._compute_loss_for_module_continuous``,
    ``SACTorchLearner.compute_gradients`` (one backward per optimiser, Adam eps 1e-7 for
    qf, qf_twin, policy, alpha) and ``update_target_network`` (per network pair)."""

    def __init__(self, module):
        m = copy.deepcopy(module)
        self.start = START
        self.pi_encoder, self.pi = m.pi_encoder, m.pi
        self.qfs = separate_critics(m.qf)
        self.targets = separate_critics(m.target_qf)
        for t in self.targets:
            t.requires_grad_(False)
        self.log_alpha = torch.zeros(1, requires_grad=True)
        params = {"qf": list(self.qfs[0].parameters()), "qf_twin": list(self.qfs[1].parameters()),
                  "policy": [*self.pi_encoder.parameters(), *self.pi.parameters()],
                  "alpha": [self.log_alpha]}
        self.optims = {k: torch.optim.Adam(v, lr=LR, eps=1e-7) for k, v in params.items()}

    def q(self, net, obs, act):
        return net(torch.cat((obs, act), -1)).squeeze(-1)

    def losses(self, batch):
        obs = batch[Columns.OBS][..., self.start:]
        next_obs = batch[Columns.NEXT_OBS][..., self.start:]
        logits = self.pi(self.pi_encoder({Columns.OBS: obs})[ENCODER_OUT])
        logits_next = self.pi(self.pi_encoder({Columns.OBS: next_obs})[ENCODER_OUT])
        q_sel = self.q(self.qfs[0], obs, batch[Columns.ACTIONS])
        q_twin_sel = self.q(self.qfs[1], obs, batch[Columns.ACTIONS])
        act, logp = TorchSquashedGaussian.from_logits(logits).rsample_and_logp()
        act_next, logp_next = TorchSquashedGaussian.from_logits(logits_next).sample_and_logp()
        critic_params = [p for net in self.qfs for p in net.parameters()]
        for p in critic_params:
            p.requires_grad = False
        q_curr = torch.min(self.q(self.qfs[0], obs, act), self.q(self.qfs[1], obs, act))
        for p in critic_params:
            p.requires_grad = True
        q_target_next = torch.min(self.q(self.targets[0], next_obs, act_next.detach()),
                                  self.q(self.targets[1], next_obs, act_next.detach()))
        alpha = torch.exp(self.log_alpha)
        q_next = (1.0 - batch[Columns.TERMINATEDS].float()) * (
            q_target_next - alpha.detach() * logp_next.detach())
        y = (batch[Columns.REWARDS] + (GAMMA ** batch["n_step"]) * q_next).detach()
        huber = torch.nn.HuberLoss(reduction="none", delta=1.0)
        return {"qf": torch.mean(batch["weights"] * huber(q_sel, y)),
                "qf_twin": torch.mean(batch["weights"] * huber(q_twin_sel, y)),
                "policy": torch.mean(alpha.detach() * logp - q_curr),
                "alpha": -torch.mean(self.log_alpha * (logp.detach() + TARGET_ENTROPY))}

    def step(self, batch):
        losses = self.losses(batch)
        grads = {}
        for name, optim in self.optims.items():
            optim.zero_grad(set_to_none=True)
            losses[name].backward(retain_graph=True)
            grads[name] = [p.grad.clone() for g in optim.param_groups for p in g["params"]]
        for optim in self.optims.values():
            optim.step()
        with torch.no_grad():
            for main, target in zip(self.qfs, self.targets, strict=True):
                for p, t in zip(main.parameters(), target.parameters(), strict=True):
                    t.copy_(TAU * p + (1.0 - TAU) * t)
        return {k: v.detach() for k, v in losses.items()}, grads


class Ours:
    """The update as ``MBPOTorchLearner._sac_step`` + ``_polyak`` run it."""

    def __init__(self, module):
        self.module = module
        self.log_alpha = torch.zeros(1, requires_grad=True)
        m = module
        groups = [list(m.qf.parameters()), [*m.pi_encoder.parameters(), *m.pi.parameters()],
                  [self.log_alpha]]
        self.optims = [torch.optim.Adam(g, lr=LR, eps=1e-7, fused=True) for g in groups]
        self.params = [p for g in groups for p in g]
        self.adam = None
        self.targets = list(m.target_qf.parameters())
        self.mains = list(m.qf.parameters())

    def step(self, batch):
        act = batch[Columns.ACTIONS]
        noise = (torch.empty_like(act).normal_(), torch.empty_like(act).normal_())
        losses = sac_losses(self.module, self.log_alpha, TARGET_ENTROPY, batch, noise, GAMMA)
        grads = list(torch.autograd.grad(losses.total, self.params))
        if self.adam is None:  # the first step through torch's Adam (creates its state)
            for p, g in zip(self.params, grads, strict=True):
                p.grad = g.clone()
            for optim in self.optims:
                optim.step()
            self.adam = FusedAdamSteps(self.optims)
        else:
            self.adam([g.clone() for g in grads])
        with torch.no_grad():
            torch._foreach_lerp_(self.targets, self.mains, TAU)
        return losses, grads


def assert_close(a, b, msg=""):
    torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6, msg=msg)


# ---------------------------------------------------------------------- tests
def test_squashed_gaussian_is_rllibs():
    """Actions, log-probs and their gradients equal RLlib's ``TorchSquashedGaussian``
    (``rsample_and_logp``) for the same noise. (RLlib's Gaussian log-density computes
    ``(z - loc) / std`` back from ``z``, which loses ~1e-5 relative where ``std`` is ~0.01 and
    ``|loc|`` ~3; ours uses the noise itself, hence the gradient's looser tolerance.)"""
    logits = torch.randn(B, 2 * ACT, generator=torch.Generator().manual_seed(0)) * 3
    logits[:, ACT:] -= 1.0
    ref_in = logits.clone().requires_grad_(True)
    torch.manual_seed(1)
    a_ref, logp_ref = TorchSquashedGaussian.from_logits(ref_in).rsample_and_logp()
    ours_in = logits.clone().requires_grad_(True)
    torch.manual_seed(1)
    a, logp = squashed_gaussian_sample(ours_in, torch.empty(B, ACT).normal_())
    assert_close(a, a_ref)
    assert_close(logp, logp_ref)
    w = torch.randn(B, ACT)
    (a_ref * w).sum().add(logp_ref.sum()).backward()
    (a * w).sum().add(logp.sum()).backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_stacked_critics_are_separate_critics(activation):
    """One baddbmm per layer for K critics = K separate MLPs (values and gradients)."""
    stack = StackedQ(2, OBS + ACT, (16, 8), activation)
    x = torch.randn(B, OBS + ACT)
    out = stacked_mlp(x, list(stack.weights), list(stack.biases), stack.activation)
    assert out.shape == (2, B, 1)
    for k in range(2):
        h = x
        for i, (w, b) in enumerate(zip(stack.weights, stack.biases, strict=True)):
            h = h @ w[k] + b[k, 0]
            if i < 2:
                h = stack.activation(h)
        assert_close(out[k], h)
    # detached parameters: gradients reach the inputs only
    obs, act = torch.randn(B, OBS), torch.randn(B, ACT, requires_grad=True)
    stack(obs, act, detach_params=True).sum().backward()
    assert act.grad is not None and all(p.grad is None for p in stack.parameters())


def test_update_matches_rllib_sac_for_several_steps():
    """Five updates from the same state and noise: every loss at every step, every gradient
    of the first step, and every parameter (policy, both critics, both targets, log_alpha)
    afterwards equal the RLlib-semantics reference to float32 tolerance."""
    module = make_module()
    ref, ours = RLlibReference(module), Ours(module)
    for step in range(5):
        batch = make_batch(step)
        torch.manual_seed(100 + step)
        ref_losses, ref_grads = ref.step(batch)
        torch.manual_seed(100 + step)
        losses, grads = ours.step(batch)
        assert_close(losses.critic[0], ref_losses["qf"], f"qf loss, step {step}")
        assert_close(losses.critic[1], ref_losses["qf_twin"], f"qf_twin loss, step {step}")
        assert_close(losses.actor, ref_losses["policy"], f"policy loss, step {step}")
        assert_close(losses.alpha, ref_losses["alpha"], f"alpha loss, step {step}")
        if step == 0:
            n_q = len(list(module.qf.parameters()))
            stacked = [torch.stack([a.T if a.dim() == 2 else a[None]
                                    for a in (ref_grads["qf"][i], ref_grads["qf_twin"][i])])
                       for i in range(len(ref_grads["qf"]))]
            # ref: (W0, b0, W1, b1, ...) per critic; ours: (W0, W1, ..., b0, b1, ...)
            ref_w, ref_b = stacked[0::2], stacked[1::2]
            for g, r in zip(grads[:n_q], ref_w + ref_b, strict=True):
                assert_close(g, r, "critic gradient")
            n_pi = len(ref_grads["policy"])
            for g, r in zip(grads[n_q:n_q + n_pi], ref_grads["policy"], strict=True):
                assert_close(g, r, "policy gradient")
            assert_close(grads[-1], ref_grads["alpha"][0], "alpha gradient")
    assert_close(ours.log_alpha, ref.log_alpha, "log_alpha")
    for name, a, b in (("pi_encoder", module.pi_encoder, ref.pi_encoder),
                       ("pi", module.pi, ref.pi)):
        for (k, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
            assert_close(p, q, f"{name}.{k}")
    for stack, nets in ((module.qf, ref.qfs), (module.target_qf, ref.targets)):
        for k, net in enumerate(nets):
            for (w, b), lin in zip(zip(stack.weights, stack.biases, strict=True),
                                   [m for m in net if isinstance(m, torch.nn.Linear)],
                                   strict=True):
                assert_close(w[k].T, lin.weight)
                assert_close(b[k, 0], lin.bias)
    # the parameters did move (the comparison is not of untouched tensors)
    assert not torch.equal(ours.log_alpha.detach(), torch.zeros(1))


def test_fused_adam_steps_equal_torch_adam_with_two_learning_rates():
    """FusedAdamSteps is torch's Adam step (per-group learning rates, the optimisers' own
    state advanced)."""
    torch.manual_seed(0)
    a = [torch.randn(5, 4, requires_grad=True), torch.randn(3, requires_grad=True)]
    b = [p.detach().clone().requires_grad_(True) for p in a]
    opt_a = [torch.optim.Adam([a[0]], lr=1e-2, eps=1e-7), torch.optim.Adam([a[1]], lr=3e-3)]
    opt_b = [torch.optim.Adam([b[0]], lr=1e-2, eps=1e-7, fused=True),
             torch.optim.Adam([b[1]], lr=3e-3, fused=True)]
    steps = None
    for i in range(4):
        grads = [torch.randn_like(p) for p in a]
        for p, g in zip(a, grads, strict=True):
            p.grad = g.clone()
        for o in opt_a:
            o.step()
        if steps is None:
            for p, g in zip(b, grads, strict=True):
                p.grad = g.clone()
            for o in opt_b:
                o.step()
            steps = FusedAdamSteps(opt_b)
        else:
            steps(grads)
        for p, q in zip(a, b, strict=True):
            assert_close(q, p, f"step {i}")
    assert float(opt_b[0].state[b[0]]["step"]) == 4.0


def test_module_api_for_env_runners_and_old_checkpoints():
    """forward_inference/forward_exploration give the policy's distribution inputs (the env
    runners' API); the inference-only state leaves the critics out; a state with RLlib's
    separate critics (the layout before stacking) loads into the stacked critics."""
    module = make_module()
    obs = torch.randn(4, OBS)
    out = module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
    assert out.shape == (4, 2 * ACT)
    torch.testing.assert_close(
        module.forward_exploration({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS], out)
    inference_state = module.get_state(inference_only=True)
    assert inference_state and not any(k.startswith(("qf.", "target_qf."))
                                       for k in inference_state)
    # RLlib's layout: qf_encoder.net.mlp.{0,2}, qf.net.mlp.0 (and twin, and targets)
    old, nets = {}, {}
    for prefix, stack in (("", module.qf), ("target_", module.target_qf)):
        nets[prefix] = separate_critics(stack)
        for twin, net in zip(("", "_twin"), nets[prefix], strict=True):
            lins = [m for m in net if isinstance(m, torch.nn.Linear)]
            for i, lin in enumerate(lins[:-1]):
                key = f"{prefix}qf{twin}_encoder.net.mlp.{2 * i}"
                old[f"{key}.weight"] = lin.weight.detach().numpy()
                old[f"{key}.bias"] = lin.bias.detach().numpy()
            old[f"{prefix}qf{twin}.net.mlp.0.weight"] = lins[-1].weight.detach().numpy()
            old[f"{prefix}qf{twin}.net.mlp.0.bias"] = lins[-1].bias.detach().numpy()
    old.update({k: v for k, v in module.get_state().items() if k.startswith("pi")})
    converted = stack_separate_critics(old)
    assert set(converted) == set(module.get_state())
    fresh = make_module()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh.set_state(old)
    for k, v in module.state_dict().items():
        assert_close(fresh.state_dict()[k], v, k)


def test_single_critic_without_twin_q():
    """twin_q=False: K = 1, the losses have one critic term."""
    module = make_module(twin_q=False)
    assert module.qf.k == 1
    batch = make_batch(0)
    noise = (torch.randn(B, ACT), torch.randn(B, ACT))
    losses = sac_losses(module, torch.zeros(1, requires_grad=True), -1.0, batch, noise, GAMMA)
    assert losses.critic.shape == (1,) and torch.isfinite(losses.total)
