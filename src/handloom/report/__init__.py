"""The report stage and the pull-request report diff."""
