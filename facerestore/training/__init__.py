"""Offline flows: degradations, training, dataset cleaning, unpaired fine-tuning."""
