"""Cart-pole balancing, simulated in torch: REINFORCE against PPO on the same environment steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import losskit
from losskit.arena.tasks.base import Task, register_task

__all__ = ["ActorCritic", "CartPole"]

# Seeds when none are given: one seed's two runs take about 5 s of CPU time.
RL_SEEDS = 10

class CartPole:
    """The classic cart-pole balancing task (Barto, Sutton & Anderson 1983; the equations and
    constants of Gymnasium's ``CartPole-v1``), ``envs`` copies stepped together in torch.

    Reward 1 per step; an episode ends when the pole leans past 12 degrees, the cart leaves
    [-2.4, 2.4], or after ``max_steps`` steps, and the copy restarts.
    """

    GRAVITY, CART_MASS, POLE_MASS, HALF_LENGTH, FORCE, TAU = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02

    def __init__(self, envs: int, generator: torch.Generator, max_steps: int = 200) -> None:
        self.generator, self.max_steps = generator, max_steps
        self.state = self._reset(envs)
        self.steps = torch.zeros(envs, dtype=torch.long)

    def _reset(self, n: int) -> Tensor:
        return (torch.rand(n, 4, generator=self.generator) - 0.5) * 0.1

    def step(self, action: Tensor) -> tuple[Tensor, Tensor]:
        x, x_dot, theta, theta_dot = self.state.unbind(-1)
        force = (2 * action - 1).float() * self.FORCE
        total = self.CART_MASS + self.POLE_MASS
        cos, sin = torch.cos(theta), torch.sin(theta)
        temp = (force + self.POLE_MASS * self.HALF_LENGTH * theta_dot**2 * sin) / total
        theta_acc = (self.GRAVITY * sin - cos * temp) / (
            self.HALF_LENGTH * (4.0 / 3.0 - self.POLE_MASS * cos**2 / total))
        x_acc = temp - self.POLE_MASS * self.HALF_LENGTH * theta_acc * cos / total
        self.state = torch.stack((x + self.TAU * x_dot, x_dot + self.TAU * x_acc, theta + self.TAU * theta_dot,
                                  theta_dot + self.TAU * theta_acc), -1)
        self.steps += 1
        done = (self.state[:, 0].abs() > 2.4) | (self.state[:, 2].abs() > 0.2095) | (self.steps >= self.max_steps)
        reward = torch.ones(len(done))
        if bool(done.any()):
            self.state[done] = self._reset(int(done.sum()))
            self.steps[done] = 0
        return reward, done


class ActorCritic(nn.Module):
    """A shared two-layer body with a policy head (2 action logits) and a value head."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh())
        self.policy, self.value = nn.Linear(width, 2), nn.Linear(width, 1)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(obs)
        return self.policy(h), self.value(h).squeeze(-1)


RL_ENVS, RL_HORIZON, RL_ROLLOUTS, PPO_EPOCHS, PPO_MINIBATCHES, GAMMA, LAM = 16, 128, 4, 4, 4, 0.99, 0.95


def _rollout(model: nn.Module, env: CartPole, generator: torch.Generator, device: torch.device) -> dict[str, Tensor]:
    """``RL_HORIZON`` steps of every copy, time along dim 0."""
    obs, actions, log_probs, values, rewards, dones = [], [], [], [], [], []
    with torch.no_grad():
        for _ in range(RL_HORIZON):
            o = env.state.clone()
            logits, value = model(o.to(device))
            logp = torch.log_softmax(logits.cpu(), -1)
            a = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
            r, d = env.step(a)
            obs.append(o)
            actions.append(a)
            log_probs.append(logp.gather(1, a[:, None]).squeeze(1))
            values.append(value.cpu())
            rewards.append(r)
            dones.append(d)
        next_value = model(env.state.to(device))[1].cpu()
    out = {k: torch.stack(v) for k, v in dict(obs=obs, actions=actions, log_probs=log_probs, values=values,
                                               rewards=rewards, dones=dones).items()}
    out["next_value"] = next_value
    return out


def _cartpole_train_epoch(model: nn.Module, loss: nn.Module, epoch: int, seed: int, device: torch.device):
    """Rollouts with the current policy, then the loss's updates: one REINFORCE step per rollout, or
    PPO's epochs of minibatches (clipped surrogate + value loss + entropy bonus) on GAE advantages."""
    from losskit import rl

    name = loss.registered_name
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    env = CartPole(RL_ENVS, generator)
    for _ in range(RL_ROLLOUTS):
        batch = _rollout(model, env, generator, device)
        if name == "reinforce":
            returns = rl.discounted_returns(batch["rewards"], batch["dones"], GAMMA)
            logp = torch.log_softmax(model(batch["obs"].to(device))[0], -1)
            taken = logp.gather(-1, batch["actions"].to(device)[..., None]).squeeze(-1)
            yield loss(taken.flatten(), returns.flatten().to(device))
            continue
        advantages, returns = rl.gae(batch["rewards"], batch["values"], batch["dones"], GAMMA, LAM,
                                     next_value=batch["next_value"])
        flat = {k: v.flatten(0, 1) for k, v in batch.items() if k != "next_value"}
        flat.update(advantages=advantages.flatten(), returns=returns.flatten())
        n = len(flat["actions"])
        for _ in range(PPO_EPOCHS):
            order = torch.randperm(n, generator=generator)
            for part in order.chunk(PPO_MINIBATCHES):
                mb = {k: v[part].to(device) for k, v in flat.items()}
                logits, values = model(mb["obs"])
                logp = torch.log_softmax(logits, -1).gather(-1, mb["actions"][:, None]).squeeze(-1)
                policy = loss(logp, mb["log_probs"], advantages=mb["advantages"])
                value = losskit.value_loss(values, mb["returns"], old_values=mb["values"], clip_eps=0.2)
                entropy = losskit.entropy_bonus(logits)
                yield _Parts(policy + 0.5 * value + 0.01 * entropy,
                             {"policy": policy.detach(), "value": value.detach(), "entropy": -entropy.detach()})


@dataclass
class _Parts:
    """A loss with named parts, as the runner logs it."""

    total: Tensor
    components: dict[str, Tensor]


def _policy_objective(spec: str) -> nn.Module:
    """One policy objective (not a weighted sum): the loop around it differs between the two."""
    loss = losskit.get(spec.strip())
    if loss.registered_name not in ("reinforce", "ppo_clip"):
        raise ValueError(f"the rl task compares 'reinforce' and 'ppo_clip' (alias 'ppo'), got {spec.strip()!r}")
    return loss


def _cartpole_metrics(model: nn.Module, val: Any, device: torch.device) -> dict[str, float]:
    """Mean return of 32 greedy episodes (capped at 200 steps)."""
    env = CartPole(32, torch.Generator().manual_seed(12345))
    returns = torch.zeros(32)
    alive = torch.ones(32, dtype=torch.bool)
    for _ in range(env.max_steps):
        action = model(env.state.to(device))[0].argmax(-1).cpu()
        reward, done = env.step(action)
        returns += reward * alive
        alive &= ~done
        if not alive.any():
            break
    return {"return": float(returns.mean())}


def _no_data(seed: int) -> tuple[tuple, tuple]:
    """The rl task makes its data while it trains (:func:`_cartpole_train_epoch`)."""
    return (), ()


register_task(Task(
    name="rl",
    description=("Cart-pole balancing (16 copies, episodes of at most 200 steps): per epoch 4 rollouts of 128 "
                 "steps each, used for one REINFORCE step each, or for PPO's 4 epochs of 4 minibatches "
                 "(clipped surrogate, clipped value loss, entropy bonus) on GAE advantages; the same "
                 "environment steps for both. The metric is the mean return of 32 greedy episodes."),
    default_losses=("reinforce", "ppo"),
    make_data=_no_data,
    make_model=ActorCritic,
    metrics={"return": "max"},
    primary_metric="return",
    evaluate=_cartpole_metrics,
    make_loss=_policy_objective,
    train_epoch=_cartpole_train_epoch,
    steps_per_epoch=RL_ROLLOUTS * PPO_EPOCHS * PPO_MINIBATCHES,
    epochs=10,
    batch_size=RL_ENVS,
    lr=3e-3,
    seeds=RL_SEEDS,
))
