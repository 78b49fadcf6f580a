"""dbtkctl: the control CLI for the DB Toolkit backend daemon."""
