#!/usr/bin/env python3
"""Self-test of scripts/check_deploy.py: the repository's files pass, and each kind of
mistake in a copy of them is caught, judged by what the chat binary accepts.

Usage: scripts/check_deploy_test.py [--chat-bin PATH]   (or $CHAT_BIN; default: cargo build)
"""

import os
import re
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_deploy as cd  # noqa: E402

CLI = None  # set in main(): one binary for every test
FILES = ["Cargo.toml", "Cargo.lock", "Dockerfile", ".dockerignore", "compose.yaml", "deploy",
         "diesel.toml", "migrations", "static", "src"]


class DeployCheck(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="check-deploy-")
        for f in FILES:
            src = os.path.join(cd.REPO, f)
            dst = os.path.join(self.dir, f)
            if f in ("src", "static", "migrations"):
                # Only their existence matters (COPY sources): never edited here.
                os.symlink(src, dst)
            elif os.path.isdir(src):
                shutil.copytree(src, dst)
            elif os.path.exists(src):
                shutil.copy(src, dst)

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def edit(self, path, old, new, count=1):
        p = os.path.join(self.dir, path)
        with open(p, encoding="utf-8") as f:
            text = f.read()
        self.assertIn(old, text, f"{path} no longer has {old!r}: update the test")
        with open(p, "w", encoding="utf-8") as f:
            f.write(text.replace(old, new, count))

    def run_checks(self, cli=None):
        return cd.run_checks(self.dir, cli or CLI, tools=False, out=lambda _: None)

    def assertFails(self, pattern, cli=None):
        c = self.run_checks(cli)
        self.assertTrue(any(re.search(pattern, f) for f in c.failures),
                        f"no failure matching {pattern!r}; failures: {c.failures}")
        return c

    def test_the_repository_passes(self):
        c = self.run_checks()
        self.assertEqual(c.failures, [])
        self.assertGreater(c.passed, 300)
        # Every chat workload was judged by the binary itself.
        self.assertFalse([n for n in c.notes if "not validated" in n], c.notes)

    def test_any_setting_the_binary_reads_is_accepted(self):
        # Names the old copied list lacked (it failed on these).
        self.edit("compose.yaml", "    LOG_FORMAT: json\n",
                  "    LOG_FORMAT: json\n    DRAIN_TIMEOUT_SECS: \"15\"\n    MAX_QUEUED_MIB: \"128\"\n")
        self.edit("deploy/k8s/gateway.yaml", '"--no-migrate"]',
                  '"--no-migrate", "--max-connections-per-user", "8", "--registration=closed"]')
        self.assertEqual(self.run_checks().failures, [])

    def test_an_unknown_env_name_fails(self):
        self.edit("compose.yaml", "    LOG_FORMAT: json\n", "    LOG_FORMAT: json\n    DRAIN_TIMEOUT: \"15\"\n")
        self.assertFails(r"compose.yaml: gateway-1: env DRAIN_TIMEOUT is not one chat reads")
        self.edit("deploy/k8s/config.yaml", "  RUST_LOG: info\n", "  RUSTLOG: info\n")
        self.assertFails(r"deploy/k8s: chat-config: env RUSTLOG is not one chat reads")

    def test_an_unknown_flag_or_value_fails(self):
        self.edit("deploy/k8s/gateway.yaml", '"--no-migrate"]', '"--no-migrate", "--max-queued-mb", "9"]')
        self.assertFails(r"gateway.yaml.*unknown argument '--max-queued-mb'")
        self.edit("compose.yaml", '["serve", "--role", "consumer"', '["serve", "--role", "relay"')
        self.assertFails(r"compose.yaml: consumer: --role 'relay' not in \['gateway', 'consumer', 'all'\]")

    def test_migrate_takes_only_its_flags(self):
        self.edit("deploy/k8s/migrate-job.yaml", 'args: ["migrate"]', 'args: ["migrate", "--role", "all"]')
        self.assertFails(r"migrate-job.yaml.*chat migrate takes only .*not --role")

    def test_the_binary_validates_each_workload(self):
        # Parses, but chat refuses to start with it: a secret too short.
        self.edit("deploy/k8s/config.yaml", "JWT_SECRET: CHANGE-ME-to-at-least-32-random-bytes-0123456789",
                  "JWT_SECRET: too-short")
        self.assertFails(r"gateway.yaml.*chat config --check -- serve --role gateway --no-migrate "
                         r"refuses it: .*JWT_SECRET")
        self.tearDown()
        self.setUp()
        # A broker list chat cannot parse.
        self.edit("deploy/k8s/config.yaml", "KAFKA_BROKERS: kafka-0.kafka:9093,", "KAFKA_BROKERS: kafka-0.kafka,")
        self.assertFails(r"consumer.yaml.*refuses it: .*KAFKA_BROKERS")

    def test_a_missing_required_setting_fails(self):
        self.edit("compose.yaml", "    REDIS_URL: redis://redis:6379\n", "")
        c = self.assertFails(r"compose.yaml: gateway-1: chat serve needs REDIS_URL")
        self.assertTrue(any(re.search(r"gateway-1: chat config --check .*REDIS_URL", f) for f in c.failures),
                        c.failures)

    def test_the_grace_period_must_cover_the_drain(self):
        self.edit("deploy/k8s/config.yaml", "  RUST_LOG: info\n", "  RUST_LOG: info\n  DRAIN_TIMEOUT_SECS: \"60\"\n")
        self.assertFails(r"gateway.yaml.*terminationGracePeriodSeconds 40 .*not more than the drain "
                         r"\(DRAIN_TIMEOUT_SECS=60\)")

    def test_the_gateway_autoscaler_is_checked(self):
        self.edit("deploy/k8s/gateway.yaml", "      stabilizationWindowSeconds: 300\n", "      stabilizationWindowSeconds: 60\n")
        self.edit("deploy/k8s/gateway.yaml", "          value: 1\n", "          value: 3\n")
        self.assertFails(r"HorizontalPodAutoscaler/chat-gateway scales down within 5 minutes")
        self.assertFails(r"HorizontalPodAutoscaler/chat-gateway may drain more than one gateway")
        self.edit("deploy/k8s/gateway.yaml", "    name: chat-gateway\n  minReplicas: 2", "    name: chat-consumer\n  minReplicas: 2")
        self.assertFails(r"HorizontalPodAutoscaler/chat-gateway scales consumers")
        self.assertFails(r"Deployment/chat-gateway \(gateways\) has no HorizontalPodAutoscaler")

    def test_deployments_are_spread_over_nodes_and_zones(self):
        self.edit("deploy/k8s/consumer.yaml", "          topologyKey: topology.kubernetes.io/zone\n",
                  "          topologyKey: kubernetes.io/hostname\n")
        self.assertFails(r"Deployment/chat-consumer is not spread over nodes and zones")

    def test_the_names_come_from_the_binary(self):
        # A binary that no longer reads DATA_DIR: the Dockerfile's ENV DATA_DIR is now wrong.
        settings = [s for s in CLI.settings if s.get("env") != "DATA_DIR"]
        self.assertFails(r"Dockerfile ENV: env DATA_DIR is not one chat reads", cd.Cli(settings, CLI.chat_bin))

    def test_a_service_url_without_a_compose_service_fails(self):
        self.edit("compose.yaml", "REDIS_URL: redis://redis:6379", "REDIS_URL: redis://cache:6379")
        self.assertFails(r"REDIS_URL host cache is not a compose service")

    def test_secret_files_point_into_a_mount(self):
        self.edit("deploy/k8s/gateway.yaml", "value: /var/run/secrets/chat/REDIS_URL",
                  "value: /var/run/secret/chat/REDIS_URL")
        self.assertFails(r"gateway.yaml.*REDIS_URL_FILE=/var/run/secret/chat/REDIS_URL is in no mounted "
                         r"Secret or ConfigMap")
        self.tearDown()
        self.setUp()
        self.edit("deploy/k8s/config.yaml", "  REDIS_URL: rediss://", "  REDIS: rediss://")
        self.assertFails(r"consumer.yaml.*REDIS_URL_FILE=/var/run/secrets/chat/REDIS_URL: Secret chat-secrets "
                         r"has no key REDIS_URL")
        self.tearDown()
        self.setUp()
        self.edit("deploy/k8s/gateway.yaml", "        fsGroup: 10001\n", "")
        self.assertFails(r"gateway.yaml.*Secret chat-secrets mounted with mode 440")

    def test_the_ca_settings_may_be_dropped(self):
        # Providers with public CAs: no CA settings, no chat-ca ConfigMap; still valid.
        # (Kafka keeps KAFKA_TLS.)
        self.edit("deploy/k8s/config.yaml", "  DATABASE_CA_FILE: /etc/chat/ca/database-ca.pem\n"
                  "  REDIS_CA_FILE: /etc/chat/ca/redis-ca.pem\n"
                  "  KAFKA_CA_FILE: /etc/chat/ca/kafka-ca.pem\n", "")
        text = open(os.path.join(self.dir, "deploy/k8s/config.yaml"), encoding="utf-8").read()
        with open(os.path.join(self.dir, "deploy/k8s/config.yaml"), "w", encoding="utf-8") as f:
            f.write(text[:text.index("---\n# !!! EXAMPLE ONLY: put your providers' CA")])
        c = self.run_checks()
        self.assertEqual(c.failures, [])
        self.assertFalse([n for n in c.notes if "not validated" in n], c.notes)

    def test_the_contents_of_secret_files_are_validated(self):
        # chat reads the mounted Secret's value: plaintext Redis with a Redis CA file is refused.
        self.edit("deploy/k8s/config.yaml", "REDIS_URL: rediss://", "REDIS_URL: redis://")
        self.assertFails(r"gateway.yaml.*refuses it: .*REDIS_CA_FILE.*rediss://")
        self.tearDown()
        self.setUp()
        self.edit("deploy/secrets.example/database_url", "postgres://", "mysql://")
        self.assertFails(r"compose.managed.yaml: gateway-1: chat config --check .*refuses it: .*DATABASE_URL")

    def test_the_managed_compose_takes_its_secrets_from_files(self):
        self.edit("deploy/compose.managed.yaml", "    JWT_SECRET_FILE: /run/secrets/jwt_secret\n",
                  "    JWT_SECRET: CHANGE-ME-to-at-least-32-random-bytes-0123456789\n")
        self.assertFails(r"compose.managed.yaml: gateway-1: JWT_SECRET in the environment; give it as a "
                         r"secret file")
        self.tearDown()
        self.setUp()
        self.edit("deploy/compose.managed.yaml", "    secrets: [database_url, database_ca.pem]\n",
                  "    secrets: [database_url]\n")
        self.assertFails(r"compose.managed.yaml: migrate: DATABASE_CA_FILE=/run/secrets/database_ca.pem, but "
                         r"the service has no secret database_ca.pem")

    def test_kafka_sasl_tls_settings_are_checked(self):
        # SASL without its password file: chat refuses it.
        self.edit("deploy/k8s/gateway.yaml", "            - name: KAFKA_PASSWORD_FILE\n"
                  "              value: /var/run/secrets/chat/KAFKA_PASSWORD\n", "")
        self.assertFails(r"gateway.yaml.*refuses it: .*KAFKA_PASSWORD")
        self.tearDown()
        self.setUp()
        # The Kafka password is a secret: not in a ConfigMap taken as environment variables,
        # not in the managed compose's environment.
        self.edit("deploy/k8s/config.yaml", "  KAFKA_USERNAME: chat\n",
                  "  KAFKA_USERNAME: chat\n  KAFKA_PASSWORD: CHANGE-ME\n")
        self.assertFails(r"deploy/k8s: ConfigMap chat-config gives the secret KAFKA_PASSWORD as an "
                         r"environment variable")
        self.edit("deploy/compose.managed.yaml", "    KAFKA_PASSWORD_FILE: /run/secrets/kafka_password\n",
                  "    KAFKA_PASSWORD: CHANGE-ME\n")
        self.assertFails(r"compose.managed.yaml: gateway-1: KAFKA_PASSWORD in the environment")
        self.tearDown()
        self.setUp()
        # A CA file chat cannot read: its secret is missing from the service.
        self.edit("deploy/compose.managed.yaml", " kafka_ca.pem,\n            kafka_password]",
                  "\n            kafka_password]")
        self.assertFails(r"compose.managed.yaml: consumer: KAFKA_CA_FILE=/run/secrets/kafka_ca.pem, but the "
                         r"service has no secret kafka_ca.pem")

    def test_the_kafka_client_certificate_lines_work_uncommented(self):
        # Kubernetes: the ConfigMap lines alone point at keys the Secret does not have yet.
        self.edit("deploy/k8s/config.yaml", "  # KAFKA_CLIENT_CERT: ", "  KAFKA_CLIENT_CERT: ")
        self.edit("deploy/k8s/config.yaml", "  # KAFKA_CLIENT_KEY: ", "  KAFKA_CLIENT_KEY: ")
        self.assertFails(r"gateway.yaml.*KAFKA_CLIENT_CERT=/var/run/secrets/chat/KAFKA_CLIENT_CERT: Secret "
                         r"chat-secrets has no key KAFKA_CLIENT_CERT")
        self.edit("deploy/k8s/config.yaml", "  KAFKA_PASSWORD: CHANGE-ME\n",
                  "  KAFKA_PASSWORD: CHANGE-ME\n  KAFKA_CLIENT_CERT: PEM\n  KAFKA_CLIENT_KEY: PEM\n")
        # Compose: the environment lines alone name secrets the services do not have.
        self.edit("deploy/compose.managed.yaml", "    # KAFKA_CLIENT_CERT: ", "    KAFKA_CLIENT_CERT: ")
        self.edit("deploy/compose.managed.yaml", "    # KAFKA_CLIENT_KEY: ", "    KAFKA_CLIENT_KEY: ")
        self.assertFails(r"compose.managed.yaml: gateway-1: KAFKA_CLIENT_CERT=/run/secrets/kafka_client_cert.pem, "
                         r"but the service has no secret kafka_client_cert.pem")
        self.edit("deploy/compose.managed.yaml", "kafka_ca.pem,\n            kafka_password]",
                  "kafka_ca.pem,\n            kafka_password, kafka_client_cert.pem, kafka_client_key.pem]")
        for line in ("  # kafka_client_cert.pem:\n  #   file:", "  # kafka_client_key.pem:\n  #   file:"):
            self.edit("deploy/compose.managed.yaml", line, line.replace("# ", ""))
        # Everything uncommented: valid, and chat was asked with a certificate and key in place.
        c = self.run_checks()
        self.assertEqual(c.failures, [])
        self.assertFalse([n for n in c.notes if "not validated" in n], c.notes)


def main():
    global CLI
    args = sys.argv[1:]
    chat_bin = None
    if args[:1] == ["--chat-bin"] and len(args) >= 2:
        chat_bin, args = args[1], args[2:]
    CLI = cd.load_cli(cd.chat_binary(chat_bin))
    unittest.main(argv=[sys.argv[0], *args])


if __name__ == "__main__":
    main()
