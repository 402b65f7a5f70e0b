"""Client-level differential privacy for federated jobs: the job's settings (``settings.py``),
the accountant that turns released rounds into epsilon (``accountant.py``), and the central
noise added at aggregation (``central_noise.py``). Device-side clipping is ``models/update_privacy.py``."""
