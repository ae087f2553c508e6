"""The ``/activelabel/*`` route modules."""
