"""aa-studio: the web page over the library (learn a person, direct them, the identity library)."""
