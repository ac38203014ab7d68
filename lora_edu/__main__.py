"""``python -m lora_edu``: print the environment report (versions, device, threads) for a bug report."""
from .environment import environment_report, format_report

print(format_report(environment_report()))
