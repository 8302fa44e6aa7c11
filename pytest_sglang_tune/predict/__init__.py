"""Predictions on the sim's virtual clock: one point (:mod:`.point`), a whole suite (:mod:`.grid`)."""
