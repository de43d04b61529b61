"""The privacy mathematics both sides share: the local-DP oracles (the device randomises with
them, the server de-biases with their probabilities) and the noise the server adds."""
