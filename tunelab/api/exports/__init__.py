"""`/v1/exports`: a fine-tuned model, a checkpoint or a base model written as files other tools load (a PEFT
adapter, a merged safetensors model, a GGUF file with an Ollama Modelfile), followed while it runs, downloaded."""
