"""The coordinator's Prometheus endpoint: families built at scrape time from the watched cache and from
figures background pollers already hold (`collector`), PVC's own instruments (`instruments`), ZooKeeper's
``mntr`` (`zookeeper`), and the HTTP(S) server with its bearer token (`server`)."""
