"""DomainStudio web application: photo sets, runs, galleries and packs."""
