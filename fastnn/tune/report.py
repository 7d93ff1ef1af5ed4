"""The tuners' reports: a table of trials and a figure."""

PLOT_MISSING = "tuner.plot needs matplotlib: pip install 'fastnn-cpu[bench]' (or pip install matplotlib)"


def _short(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary_table(tuner, trials):
    """One line per trial: id, status, score, epochs and hyperparameters."""
    objective = tuner.objective
    rows = [("trial", "status", f"{objective.name} ({objective.direction})", "epochs", "hyperparameters")]
    for t in trials:
        values = ", ".join(f"{k}={_short(v)}" for k, v in t.hyperparameters.items())
        if t.schedule:
            values += f"; {len(t.schedule) - 1} exploits (trial.schedule)"
        score = "-" if t.score is None else f"{t.score:.4f}"
        rows.append((t.trial_id, t.status, score, str(t.epochs), values))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(f"{c:<{w}}" for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    head = f"{type(tuner).__name__} in {tuner.project.path}: {len(tuner.trials)} trials"
    return "\n".join([head] + lines)


def plot_trials(tuner, path):
    """Score against trial number; with schedules (population-based training),
    one panel per changing hyperparameter: its value against epoch, one line per
    member."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(PLOT_MISSING) from None
    trials = tuner.trials
    names = sorted({k for t in trials for entry in t.schedule for k in entry["hyperparameters"]})
    fig, axes = plt.subplots(1 + len(names), 1, figsize=(7, 3 * (1 + len(names))), squeeze=False)
    ax = axes[0, 0]
    for status, marker in (("COMPLETED", "o"), ("PRUNED", "."), ("FAILED", "x")):
        xs = [t.number for t in trials if t.status == status and t.score is not None]
        ax.plot(xs, [tuner._trials[x].score for x in xs], marker, label=status.lower())
    ax.set_xlabel("trial")
    ax.set_ylabel(tuner.objective.name)
    ax.legend()
    for ax, name in zip(axes[1:, 0], names):
        for t in trials:
            changes = [(e["epoch"], e["hyperparameters"][name]) for e in t.schedule
                       if name in e["hyperparameters"]]
            epochs, values = [c[0] for c in changes], [c[1] for c in changes]
            if epochs:
                ax.step(epochs + [t.epochs], values + values[-1:], where="post", label=f"trial {t.trial_id}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
