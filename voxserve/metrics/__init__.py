"""Scoring transcripts: text normalisation (``normalize``) and word/character error rates (``wer``)."""
