"""gateway-loadtest: the gateway under a simulated fleet's load, measured and checked (docs/loadtest.md).

Modules: ``harness`` runs it; ``gateway_process`` starts the gateway and reads /proc;
``baselines`` measures the yardsticks; ``api_probe`` times API reads; ``convergence`` compares
the fleet's dumps with the server database; ``report`` writes the table, JSON and plot.
"""

from tools.loadtest.harness import main

__all__ = ["main"]
