"""Search agents: DDPG as in Galen (methods.md section 12), random search, and greedy-by-sensitivity.

Every agent walks the layers of one episode, giving each an action vector in [0, 1] (1 value for
pruning, 2 for quantisation, 3 joint), and learns from the episode's reward. All randomness comes
from the seed tree by (purpose, episode, step), and every learned quantity is in ``state_dict``, so
a search that is killed and resumed proposes exactly what an uninterrupted one would.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch
from torch import nn

from nora.errors import NoraError
from nora.seeds import SeedTree

AGENTS = ("ddpg", "random", "greedy")


class Environment(Protocol):
    n_layers: int
    action_dim: int
    action_keys: tuple[str, ...]
    state_dim: int

    def state(self, index: int, actions: Sequence[np.ndarray]) -> np.ndarray: ...

    def sensitivity_order(self) -> list[int]: ...


class RandomAgent:
    """Uniform actions for every layer: the no-learning baseline at the same evaluation budget."""

    name = "random"

    def __init__(self, env: Environment, seed: SeedTree):
        self.env, self.seed = env, seed

    def propose(self, episode: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        rng = self.seed.child("random", episode).numpy()
        states, actions = [], []
        for i in range(self.env.n_layers):
            states.append(self.env.state(i, actions))
            actions.append(rng.uniform(0.0, 1.0, self.env.action_dim))
        return states, actions

    def observe(self, episode: int, states, actions, reward: float) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class GreedyAgent:
    """Hill climbing from the uncompressed model, one move at a time, least sensitive layers first.

    A move is one action of one layer: prune 1/8 of the pruning range more, or lower the weight or
    the activation bit width one notch. It is kept when the reward does not fall. A refused move is
    skipped until every move has been refused; then the pruning step halves and the round starts
    again.
    """

    name = "greedy"

    def __init__(self, env: Environment, seed: SeedTree):
        from nora.compress.actions import BIT_CHOICES, FP32, action_of_bits

        self.env = env
        keys = env.action_keys
        self.direction = np.array([1.0 if k == "prune" else -1.0 for k in keys])  # towards more compression
        self.is_prune = np.array([k == "prune" for k in keys])
        start = [0.0 if k == "prune" else action_of_bits(FP32) for k in keys]
        self.current = np.tile(np.array(start), (env.n_layers, 1))
        self.notch = 1.0 / len(BIT_CHOICES)
        self.reward = -np.inf
        self.prune_step = 1.0 / 8
        self.moves = [(layer, k) for layer in env.sensitivity_order() for k in range(len(keys))]
        self.refused: set[int] = set()
        self.cursor = 0
        self.pending: dict[int, int] = {}

    def _next_move(self) -> int:
        if len(self.refused) >= len(self.moves):
            self.refused.clear()
            self.prune_step /= 2
        for _ in range(len(self.moves)):
            move = self.cursor % len(self.moves)
            self.cursor += 1
            if move not in self.refused:
                return move
        return 0

    def propose(self, episode: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        candidate = self.current.copy()
        if self.reward > -np.inf:  # the first episode measures the uncompressed model
            for _ in range(len(self.moves)):  # skip moves already at their limit
                move = self._next_move()
                layer, k = self.moves[move]
                step = self.prune_step if self.is_prune[k] else self.notch
                value = float(np.clip(candidate[layer, k] + self.direction[k] * step, 0.0, 1.0))
                if value != candidate[layer, k]:
                    break
                self.refused.add(move)
            candidate[layer, k] = value
            self.pending[episode] = move
        actions: list[np.ndarray] = []
        states = []
        for i in range(self.env.n_layers):
            states.append(self.env.state(i, actions))
            actions.append(candidate[i])
        return states, actions

    def observe(self, episode: int, states, actions, reward: float) -> None:
        move = self.pending.pop(episode, None)
        if reward >= self.reward:
            self.current = np.array(actions, dtype=float)
            self.reward = reward
        elif move is not None:
            self.refused.add(move)

    def state_dict(self) -> dict:
        return {"current": torch.tensor(self.current), "reward": float(self.reward), "prune_step": self.prune_step,
                "refused": sorted(self.refused), "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.current = state["current"].numpy().copy()
        self.reward, self.prune_step = float(state["reward"]), float(state["prune_step"])
        self.cursor = int(state["cursor"])
        self.refused = set(int(i) for i in state["refused"])


def _mlp(sizes: Sequence[int], generator: torch.Generator, sigmoid: bool) -> nn.Sequential:
    """Linear/ReLU stack initialised from ``generator`` (built on 'meta' so torch's global RNG is untouched)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b, device="meta"))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    if sigmoid:
        layers.append(nn.Sigmoid())
    net = nn.Sequential(*layers).to_empty(device="cpu")
    linear = [m for m in net if isinstance(m, nn.Linear)]
    for i, m in enumerate(linear):
        bound = 3e-3 if i == len(linear) - 1 else 1.0 / np.sqrt(m.in_features)  # small last layer (DDPG paper)
        with torch.no_grad():
            m.weight.uniform_(-bound, bound, generator=generator)
            m.bias.uniform_(-bound, bound, generator=generator)
    return net


class DDPGAgent:
    """Deep deterministic policy gradient over the layer walk (actor 400-300 sigmoid, critic 400-300).

    Warm-up episodes act uniformly at random and only fill the replay buffer; after them the actor's
    action plus truncated normal noise (sigma 0.5, times 0.95 per episode) is taken. Every
    transition of an episode carries the episode's reward minus a moving-average baseline; after each
    episode the critic and the actor take one minibatch step per layer, and the target networks
    follow with rate tau.
    """

    name = "ddpg"

    def __init__(self, env: Environment, seed: SeedTree, *, warmup: int = 10, hidden: tuple[int, int] = (400, 300),
                 lr_actor: float = 1e-4, lr_critic: float = 1e-3, tau: float = 0.01, batch_size: int = 64,
                 replay: int = 2000, discount: float = 1.0, sigma: float = 0.5, sigma_decay: float = 0.95,
                 baseline_decay: float = 0.95):
        if warmup < 0:
            raise NoraError(f"DDPG warm-up episodes must be >= 0, got {warmup}")
        self.env, self.seed = env, seed
        self.warmup, self.tau, self.batch_size, self.capacity = warmup, tau, batch_size, replay
        self.discount, self.sigma0, self.sigma_decay, self.baseline_decay = discount, sigma, sigma_decay, baseline_decay
        s, a = env.state_dim, env.action_dim
        gen = seed.child("ddpg", "init").generator()
        self.actor = _mlp([s, *hidden, a], gen, sigmoid=True)
        self.critic = _mlp([s + a, *hidden, 1], gen, sigmoid=False)
        self.actor_target = _mlp([s, *hidden, a], gen, sigmoid=True)
        self.critic_target = _mlp([s + a, *hidden, 1], gen, sigmoid=False)
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=lr_actor)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=lr_critic)
        self.buffer: dict[str, torch.Tensor] = {
            "s": torch.zeros(0, s), "a": torch.zeros(0, a), "r": torch.zeros(0), "s2": torch.zeros(0, s),
            "done": torch.zeros(0)}
        self.baseline: float | None = None
        self.episodes_seen = 0

    def sigma(self, episode: int) -> float:
        return self.sigma0 * self.sigma_decay ** max(episode - self.warmup, 0)

    def propose(self, episode: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        rng = self.seed.child("ddpg", "explore", episode).numpy()
        states: list[np.ndarray] = []
        actions: list[np.ndarray] = []
        for i in range(self.env.n_layers):
            state = self.env.state(i, actions)
            states.append(state)
            if episode < self.warmup:
                action = rng.uniform(0.0, 1.0, self.env.action_dim)
            else:
                with torch.no_grad():
                    mean = self.actor(torch.as_tensor(state, dtype=torch.float32)[None])[0].double().numpy()
                action = _truncated_normal(rng, mean, self.sigma(episode))
            actions.append(action)
        return states, actions

    def observe(self, episode: int, states, actions, reward: float) -> None:
        self.baseline = reward if self.baseline is None else (
            self.baseline_decay * self.baseline + (1 - self.baseline_decay) * reward)
        advantage = reward - self.baseline
        n = len(states)
        s = torch.as_tensor(np.array(states), dtype=torch.float32)
        a = torch.as_tensor(np.array(actions), dtype=torch.float32)
        s2 = torch.cat([s[1:], torch.zeros(1, s.shape[1])])
        done = torch.zeros(n)
        done[-1] = 1.0
        r = torch.full((n,), float(advantage))
        for key, value in (("s", s), ("a", a), ("r", r), ("s2", s2), ("done", done)):
            self.buffer[key] = torch.cat([self.buffer[key], value])[-self.capacity:]
        self.episodes_seen += 1
        if episode + 1 >= self.warmup:
            for step in range(n):
                self._update(self.seed.child("ddpg", "batch", episode, step).numpy())

    def _update(self, rng: np.random.Generator) -> None:
        size = len(self.buffer["r"])
        idx = torch.as_tensor(rng.integers(0, size, min(self.batch_size, size)))
        s, a, r, s2, done = (self.buffer[k][idx] for k in ("s", "a", "r", "s2", "done"))
        with torch.no_grad():
            next_q = self.critic_target(torch.cat([s2, self.actor_target(s2)], 1))[:, 0]
            target = r + self.discount * (1 - done) * next_q
        q = self.critic(torch.cat([s, a], 1))[:, 0]
        loss = nn.functional.mse_loss(q, target)
        self.critic_opt.zero_grad()
        loss.backward()
        self.critic_opt.step()
        policy_loss = -self.critic(torch.cat([s, self.actor(s)], 1)).mean()
        self.actor_opt.zero_grad()
        policy_loss.backward()
        self.actor_opt.step()
        with torch.no_grad():
            for net, target_net in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
                for p, tp in zip(net.parameters(), target_net.parameters()):
                    tp.mul_(1 - self.tau).add_(p, alpha=self.tau)

    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "actor_target": self.actor_target.state_dict(), "critic_target": self.critic_target.state_dict(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "buffer": dict(self.buffer), "baseline": self.baseline, "episodes_seen": self.episodes_seen}

    def load_state_dict(self, state: dict) -> None:
        for key in ("actor", "critic", "actor_target", "critic_target", "actor_opt", "critic_opt"):
            getattr(self, key).load_state_dict(state[key])
        self.buffer = dict(state["buffer"])
        self.baseline = state["baseline"]
        self.episodes_seen = int(state["episodes_seen"])


def _truncated_normal(rng: np.random.Generator, mean: np.ndarray, sigma: float) -> np.ndarray:
    """Normal noise around ``mean``, redrawn where it leaves [0, 1] (a few tries, then clipped)."""
    out = rng.normal(mean, sigma)
    for _ in range(8):
        bad = (out < 0) | (out > 1)
        if not bad.any():
            break
        out[bad] = rng.normal(mean[bad], sigma)
    return np.clip(out, 0.0, 1.0)


def make_agent(name: str, env: Environment, seed: SeedTree, **options):
    if name == "ddpg":
        return DDPGAgent(env, seed, **options)
    if name == "random":
        return RandomAgent(env, seed)
    if name == "greedy":
        return GreedyAgent(env, seed)
    raise NoraError(f"unknown agent {name!r}; choose one of {', '.join(AGENTS)}")
