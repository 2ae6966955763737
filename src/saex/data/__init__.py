"""Corpora: documents from the embedded default, Debian packages, Hugging Face datasets and local files;
tokenising, packing into fixed contexts and a document-disjoint train / held-out split."""
