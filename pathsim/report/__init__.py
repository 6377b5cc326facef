"""Cost, energy and carbon reports: ``build_report`` runs and prices the simulations, ``write_report`` renders them.

    report = pathsim.report.build_report("tpu-v4-8x8x8", "switch-base-128", run_tokens=1e12,
                                         compare_clusters=["tpu-v5p-8x8x8", "dgx-h100-32"])
    pathsim.report.write_report(report, "out/switch-base-128/")
"""

from pathsim.report.content import DENSE_CHOICES, Report, build_report
from pathsim.report.render import write_report

__all__ = ["DENSE_CHOICES", "Report", "build_report", "write_report"]
