"""PACS support: a project-owned Orthanc, a DICOMweb datastore and DICOM SEG labels."""
