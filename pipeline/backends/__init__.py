"""Model backends the stages call: text encoders, the chat endpoint and local chat model, the offline
knowledge describer, model loading, devices and precision, CTC Viterbi alignment."""
