"""The vendor's libbusnetcli.so: its ctypes binding (:mod:`.binding`), the backend on it (:mod:`.client`)."""
