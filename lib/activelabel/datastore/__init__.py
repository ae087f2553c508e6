"""Datastores: the validating local folder, its SQLite index, the DICOMweb PACS, and opening one by location."""
