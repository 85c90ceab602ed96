"""Services own transactions: each public function commits once, and sends jobs only after
the commit."""
