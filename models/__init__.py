"""Offline side: event data, the feature code shared with serving, FM / VM models, training, metrics."""
