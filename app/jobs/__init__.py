"""Background-job integrations that drive the sync from outside (Inngest)."""
