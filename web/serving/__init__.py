"""Online serving in web: the request models (``schemas``) and the endpoints (``endpoints``) of
``contract/SERVING.md``; predictions go straight to the replicas (``web.replicas``)."""
