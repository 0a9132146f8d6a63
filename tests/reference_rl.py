"""Float64 references for the rl and preference losses, written from the papers' formulas.

Plain Python loops over floats; nothing here imports losskit, so the tests compare two
independent implementations. Tensors go in, nested lists or floats come out (the tests wrap
them in tensors). The peer reductions (TRL's ``loss_type`` values) are transcribed from their
documented formulas, not from their code.
"""

from __future__ import annotations

import math


def _rows(x) -> list:
    return x.detach().double().tolist() if hasattr(x, "detach") else x


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def _log_sigmoid(z: float) -> float:
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


# --- returns and advantages (time along the first index; one list per environment column) ------


def discounted_returns(rewards, dones, gamma: float, bootstrap: list[float] | None = None) -> list:
    """G_t = r_t + gamma (1 - d_t) G_{t+1}, rewards as a (T, B) list of lists."""
    r, d = _rows(rewards), _rows(dones)
    steps, envs = len(r), len(r[0])
    out = [[0.0] * envs for _ in range(steps)]
    for b in range(envs):
        g = 0.0 if bootstrap is None else bootstrap[b]
        for t in reversed(range(steps)):
            g = r[t][b] + gamma * (1 - d[t][b]) * g
            out[t][b] = g
    return out


def gae(rewards, values, dones, gamma: float, lam: float, next_value: list[float]) -> list:
    """A_t = sum_l (gamma lam)^l delta_{t+l}, summed directly (not by the recursion), stopping at episode ends."""
    r, v, d = _rows(rewards), _rows(values), _rows(dones)
    steps, envs = len(r), len(r[0])
    out = [[0.0] * envs for _ in range(steps)]
    for b in range(envs):
        def delta(t, b=b):
            v_next = next_value[b] if t + 1 == steps else v[t + 1][b]
            return r[t][b] + gamma * (1 - d[t][b]) * v_next - v[t][b]

        for t in range(steps):
            total, factor = 0.0, 1.0
            for k in range(t, steps):
                total += factor * delta(k)
                if d[k][b]:
                    break
                factor *= gamma * lam
            out[t][b] = total
    return out


# --- policy objectives: per-token losses ----------------------------------------------------------


def ppo_clip_token(lp: float, old: float, adv: float, eps_low: float, eps_high: float,
                   dual_clip: float | None = None) -> float:
    """-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), dual-clipped at -c A for A < 0 (Ye et al. 2020)."""
    r = math.exp(lp - old)
    objective = min(r * adv, min(max(r, 1 - eps_low), 1 + eps_high) * adv)
    if dual_clip is not None and adv < 0:
        objective = max(objective, dual_clip * adv)
    return -objective


def k_estimators(lp: float, ref: float) -> tuple[float, float, float]:
    """Schulman's k1, k2, k3 with r = pi_ref / pi sampled from pi."""
    log_r = ref - lp
    return -log_r, 0.5 * log_r**2, math.exp(log_r) - 1 - log_r


def group_advantages(rewards: list[float], group_size: int, scale: str, eps: float) -> list[float]:
    out = []
    for start in range(0, len(rewards), group_size):
        g = rewards[start:start + group_size]
        mean = sum(g) / len(g)
        if scale == "group":
            std = math.sqrt(sum((x - mean) ** 2 for x in g) / (len(g) - 1))
        elif scale == "batch":
            m = sum(rewards) / len(rewards)
            std = math.sqrt(sum((x - m) ** 2 for x in rewards) / (len(rewards) - 1))
        else:
            std, eps = 1.0, 0.0
        out += [(x - mean) / (std + eps) for x in g]
    return out


def grpo(lp, old, rewards, group_size: int, mask, *, ref=None, beta=0.0, eps_low=0.2, eps_high=0.2,
         scale="group", eps=1e-4, loss_type="dapo", max_completion_length=None) -> float:
    """The GRPO loss in the three reductions TRL names: per-token PPO term plus beta * k3, then

    * ``"grpo"``: each sequence's masked token mean, averaged over sequences (Shao et al. 2024);
    * ``"dapo"`` / ``"bnpo"``: the sum over all valid tokens divided by their count (token mean);
    * ``"dr_grpo"``: the sum over all valid tokens divided by (N * max_completion_length) (Liu et al. 2025).
    """
    lp, old, m = _rows(lp), _rows(old), _rows(mask)
    ref = _rows(ref) if ref is not None else None
    adv = group_advantages(_rows(rewards), group_size, scale, eps)
    n, t_len = len(lp), len(lp[0])
    per_token = [[0.0] * t_len for _ in range(n)]
    for i in range(n):
        for t in range(t_len):
            if not m[i][t]:
                continue
            loss = ppo_clip_token(lp[i][t], old[i][t], adv[i], eps_low, eps_high)
            if beta:
                loss += beta * k_estimators(lp[i][t], ref[i][t])[2]
            per_token[i][t] = loss
    if loss_type == "grpo":
        return sum(sum(row) / max(sum(mi), 1) for row, mi in zip(per_token, m, strict=True)) / n
    total = sum(sum(row) for row in per_token)
    if loss_type == "dr_grpo":
        return total / (n * (max_completion_length or t_len))
    return total / max(sum(sum(mi) for mi in m), 1)


def value_clipped(v: float, ret: float, old: float | None, eps: float | None) -> float:
    """max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2), or (V - R)^2 without clipping."""
    loss = (v - ret) ** 2
    if eps is not None:
        v_clip = old + min(max(v - old, -eps), eps)
        loss = max(loss, (v_clip - ret) ** 2)
    return loss


def entropy(logits_row: list[float]) -> float:
    m = max(logits_row)
    z = sum(math.exp(x - m) for x in logits_row)
    p = [math.exp(x - m) / z for x in logits_row]
    return -sum(pi * math.log(pi) for pi in p if pi > 0)


# --- preference objectives: per pair --------------------------------------------------------------


def dpo(c: float, r: float, ref_c: float, ref_r: float, beta: float, variant: str, smoothing: float) -> float:
    h = (c - ref_c) - (r - ref_r)
    if variant == "sigmoid":
        return -(1 - smoothing) * _log_sigmoid(beta * h) - smoothing * _log_sigmoid(-beta * h)
    if variant == "hinge":
        return max(0.0, 1 - beta * h)
    return (h - 1 / (2 * beta)) ** 2


def simpo(avg_c: float, avg_r: float, beta: float, gamma: float, smoothing: float) -> float:
    z = beta * avg_c - beta * avg_r - gamma
    return -(1 - smoothing) * _log_sigmoid(z) - smoothing * _log_sigmoid(-z)


def orpo(avg_c: float, avg_r: float, lam: float) -> float:
    """NLL of the chosen plus lam times -log sigmoid of the log odds ratio, odds = P / (1 - P), P = exp(avg)."""
    p_c, p_r = math.exp(avg_c), math.exp(avg_r)
    log_odds_ratio = math.log(p_c / (1 - p_c)) - math.log(p_r / (1 - p_r))
    return -avg_c - lam * _log_sigmoid(log_odds_ratio)


def kto(lp: float, ref: float, desirable: bool, z0: float, beta: float, lam_d: float, lam_u: float) -> float:
    """lambda_y - v(x, y): v = lambda_D sigmoid(beta (r - z0)) or lambda_U sigmoid(beta (z0 - r))."""
    r = lp - ref
    if desirable:
        return lam_d - lam_d * _sigmoid(beta * (r - z0))
    return lam_u - lam_u * _sigmoid(beta * (z0 - r))


# --- DPO's loss types, from the papers (one pair at a time; c, r the log-ratios) -----------------


def dpo_variant(variant: str, c: float, r: float, beta: float, *, s: float = 0.0, tau: float = 0.05) -> float:
    """One pair's loss: c = log pi/pi_ref of the chosen completion, r of the rejected one."""
    h = c - r
    z = beta * h
    if variant == "sigmoid":  # DPO Eq. 7; cDPO flips the label with probability s
        return -(1 - s) * _log_sigmoid(z) - s * _log_sigmoid(-z)
    if variant == "hinge":  # SLiC-HF's calibration loss on the reward margin
        return max(0.0, 1 - z)
    if variant == "ipo":  # IPO Eq. 17, tau = beta
        return (h - 1 / (2 * beta)) ** 2
    if variant == "robust":  # rDPO Eq. 8: the unbiased loss under label noise s
        return ((1 - s) * -_log_sigmoid(z) - s * -_log_sigmoid(-z)) / (1 - 2 * s)
    if variant == "exo_pair":  # EXO Eq. 16 with K = 2: KL(softmax(beta (c, r)) || (1 - s, s))
        q_w, q_l = _sigmoid(z), _sigmoid(-z)
        return q_w * math.log(q_w / (1 - s)) + q_l * math.log(q_l / s)
    if variant == "nca_pair":  # NCA Eq. 11, K = 2: -log sigma(c) - (1/2) sum_y log sigma(-r_y)
        return -_log_sigmoid(beta * c) - 0.5 * (_log_sigmoid(-beta * c) + _log_sigmoid(-beta * r))
    if variant == "bco_pair":  # BCO Eq. 6 without the reward shift delta
        return -_log_sigmoid(beta * c) - _log_sigmoid(-beta * r)
    if variant == "sppo_hard":  # SPPO Eq. 4.7 with P(y_w wins) = 1, P(y_l wins) = 0, eta = 1 / beta
        return (c - 0.5 / beta) ** 2 + (r + 0.5 / beta) ** 2
    if variant == "apo_zero":  # APO Eq. 7
        return (1 - _sigmoid(beta * c)) + _sigmoid(beta * r)
    if variant == "apo_down":  # APO Eq. 8
        return _sigmoid(beta * c) + (1 - _sigmoid(beta * (c - r)))
    if variant == "discopop":  # DiscoPOP's log-ratio modulated loss (LRML), Eq. 5
        gate = _sigmoid(z / tau)
        return (1 - gate) * -_log_sigmoid(z) + gate * math.exp(-z)
    raise ValueError(variant)


def aot(chosen, rejected, ref_chosen, ref_rejected, beta: float, *, s: float = 0.0, paired: bool = True) -> list:
    """AOT: first-order stochastic dominance through sorting; the paired form sorts the policy and the
    reference margins, the unpaired form the chosen and the rejected log-ratios."""
    if paired:
        first = sorted(a - b for a, b in zip(chosen, rejected, strict=True))
        second = sorted(a - b for a, b in zip(ref_chosen, ref_rejected, strict=True))
    else:
        first = sorted(a - b for a, b in zip(chosen, ref_chosen, strict=True))
        second = sorted(a - b for a, b in zip(rejected, ref_rejected, strict=True))
    return [-(1 - s) * _log_sigmoid(beta * (u - v)) - s * _log_sigmoid(-beta * (u - v))
            for u, v in zip(first, second, strict=True)]


def f_score(log_ratio: float, divergence: str, alpha: float = 0.5) -> float:
    """f'(u) at u = pi / pi_ref, f-DPO Table 1 (the alpha divergence in TRL's parameterization
    (u^(alpha-1) - 1) / (alpha - 1); the paper's alpha is 1 - TRL's, up to a constant)."""
    u = math.exp(log_ratio)
    if divergence == "reverse_kl":
        return log_ratio
    if divergence == "forward_kl":
        return -1 / u  # the paper's f'(u) = -1/u; TRL's 1 - 1/u differs by a constant that cancels
    if divergence == "js_divergence":
        return math.log(2 * u / (1 + u))
    return (u ** (alpha - 1) - 1) / (alpha - 1)


# --- CPO and the loss types of TRL's CPOTrainer -----------------------------------------------------


def alphapo_reward(log_prob: float, length: float, beta: float, a: float) -> float:
    """AlphaPO's length-normalized reward (Gupta et al. 2025), as the paper writes it with the probability:
    r = -(beta / a) (pi(y)^(-a / |y|) - 1), the SimPO reward beta log pi(y) / |y| in the limit a -> 0."""
    if a == 0:
        return beta * log_prob / length
    return -(beta / a) * (math.exp(log_prob) ** (-a / length) - 1)


def cpo_preference(variant: str, c: float, r: float, n_c: float, n_r: float, beta: float, *, gamma: float = 0.5,
                   a: float = 0.0, s: float = 0.0) -> float:
    """One pair's preference term, from the summed log-probabilities c, r and the token counts n_c, n_r.

    sigmoid: CPO Eq. 3's L_prefer, -log sigma(beta log pi(y_w) - beta log pi(y_l)) (cDPO-smoothed by s);
    hinge: SLiC-HF's calibration loss max(0, 1 - beta (c - r)); ipo: IPO Eq. 17 with tau = beta on the
    average log-probabilities (TRL's CPOTrainer averages for ipo); simpo: SimPO Eq. 6; alphapo: AlphaPO's
    loss -log sigma(r(y_w) - r(y_l) - gamma). TRL applies AlphaPO's reward with any loss type (its
    ``alpha``): then each sigmoid or hinge log-probability, summed, counts as one of length 1.
    """
    averaged = variant in ("ipo", "simpo", "alphapo")
    n_c, n_r = (n_c, n_r) if averaged else (1.0, 1.0)
    # beta times the reward of each completion (AlphaPO's reward, or beta times its log-probability)
    w, l_ = alphapo_reward(c, n_c, beta, a), alphapo_reward(r, n_r, beta, a)
    if variant in ("simpo", "alphapo"):
        z = w - l_ - gamma
        return -(1 - s) * _log_sigmoid(z) - s * _log_sigmoid(-z)
    if variant == "sigmoid":
        return -(1 - s) * _log_sigmoid(w - l_) - s * _log_sigmoid(l_ - w)
    if variant == "hinge":
        return max(0.0, 1 - (w - l_))
    if variant == "ipo":
        return ((w - l_) / beta - 1 / (2 * beta)) ** 2
    raise ValueError(variant)


def cpo(chosen, rejected, chosen_lengths, rejected_lengths, variant: str, beta: float, alpha: float,
        **options) -> float:
    """CPO's batch loss, the paper's L_prefer + alpha L_NLL with TRL's NLL: the mean preference term plus
    alpha times the NLL of the chosen completions, the mean over all their tokens (TRL's cross-entropy
    over the chosen half)."""
    terms = [cpo_preference(variant, c, r, n_c, n_r, beta, **options)
             for c, r, n_c, n_r in zip(chosen, rejected, chosen_lengths, rejected_lengths, strict=True)]
    nll = -sum(chosen) / sum(chosen_lengths)
    return sum(terms) / len(terms) + alpha * nll
