"""``python -m tenantq.cli``: how ``tenantq up`` starts its child processes."""

from tenantq.cli import main

main()
