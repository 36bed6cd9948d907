"""Reference implementations the production code is tested against (see ``plain_editing``)."""
