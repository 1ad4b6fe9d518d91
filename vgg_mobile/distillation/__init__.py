"""The Distiller and the distill stage: a MobileNet student taught by the teacher."""
