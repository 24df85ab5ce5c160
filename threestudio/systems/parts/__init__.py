"""The parts a system is assembled from, one job each: RNG capture (``rng``), the logging stack (``logs``),
loss-weight auditing (``loss_weights``), optimizers from config (``optim``), step counters (``steps``), export and
geometry conversion (``export``, ``convert``). ``threestudio.systems.base`` composes them into ``BaseSystem`` and
``BaseLift3DSystem``; reconstruction-style systems add ``reconstruction`` (scene handshake, training clock,
held-out evaluation)."""
