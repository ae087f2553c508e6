"""Project stores kept beside the datastore: scores, submissions, leases, label versions, audits, and input checks."""
