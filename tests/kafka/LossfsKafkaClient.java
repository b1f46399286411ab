// The Kafka client of the lossfs scenario tests: one JVM per phase of a scenario, printing
// one line per fact the test needs (acknowledgements with their offsets, records found,
// partition leaders), so the Rust side reads keys and offsets instead of guessing them.
//
// Usage (BOOTSTRAP is host:port[,host:port...]):
//   create BOOTSTRAP TOPIC REPLICAS [NAME=VALUE...]
//       one partition on the broker ids REPLICAS (e.g. 1:2:3, the first is the preferred
//       leader), with the given topic configs, retried for up to a minute while brokers
//       register; prints "CREATED TOPIC".
//   await BOOTSTRAP TOPIC LEADER MIN_ISR MAX_ISR TIMEOUT_MS
//       waits until partition 0 has leader LEADER (-1: any, "none": no leader) and MIN_ISR
//       to MAX_ISR replicas in sync; prints "PART topic leader L isr a,b,c" and exits 0, or exits 2 with the
//       last state seen.
//   produce BOOTSTRAP TOPIC:ACKS:COUNT:PREFIX:INTERVAL_MS...
//       one producer per spec, all at once; keys PREFIX-000000...; prints
//       "ACK topic key partition offset" per acknowledgement (offset -1 for acks=0) and
//       "ERR topic key error" per failure; stops after COUNT records, or at SIGTERM, after
//       which unacknowledged records fail within seconds; prints "DONE" last.
//   consume BOOTSTRAP TOPIC TIMEOUT_MS
//       reads partition 0 from the beginning to its end offset; prints
//       "REC topic key partition offset" per record, then "END topic partition end".
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.PrintStream;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.stream.Collectors;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public final class LossfsKafkaClient {
    private static final PrintStream OUT =
            new PrintStream(new FileOutputStream(FileDescriptor.out), true);

    private static synchronized void say(String line) {
        OUT.println(line);
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: create|await|produce|consume BOOTSTRAP ...");
            System.exit(64);
        }
        switch (args[0]) {
            case "create": create(args); break;
            case "await": System.exit(await(args)); break;
            case "produce": produce(args); break;
            case "consume": consume(args); break;
            default:
                System.err.println("unknown command " + args[0]);
                System.exit(64);
        }
        System.exit(0);
    }

    private static Admin admin(String bootstrap) {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "10000");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "30000");
        return Admin.create(p);
    }

    private static void create(String[] a) throws Exception {
        String topic = a[2];
        List<Integer> replicas = new ArrayList<>();
        for (String id : a[3].split(":")) {
            replicas.add(Integer.parseInt(id));
        }
        Map<String, String> configs = new HashMap<>();
        for (int i = 4; i < a.length; i++) {
            int eq = a[i].indexOf('=');
            configs.put(a[i].substring(0, eq), a[i].substring(eq + 1));
        }
        NewTopic t = new NewTopic(topic, Collections.singletonMap(0, replicas)).configs(configs);
        // Brokers listen before they have registered with the controller, and a topic on
        // an unregistered broker is refused: retry for a while.
        long deadline = System.currentTimeMillis() + 60000;
        try (Admin admin = admin(a[1])) {
            while (true) {
                try {
                    admin.createTopics(Collections.singletonList(t)).all().get();
                    break;
                } catch (Exception e) {
                    if (System.currentTimeMillis() > deadline) {
                        throw e;
                    }
                    Thread.sleep(300);
                }
            }
        }
        say("CREATED " + topic);
    }

    private static String describe(Admin admin, String topic) throws Exception {
        TopicDescription d = admin.describeTopics(Collections.singletonList(topic))
                .allTopicNames().get().get(topic);
        TopicPartitionInfo p = d.partitions().get(0);
        int leader = p.leader() == null || p.leader().isEmpty() ? -1 : p.leader().id();
        String isr = p.isr().stream().map(n -> Integer.toString(n.id()))
                .collect(Collectors.joining(","));
        return "PART " + topic + " leader " + leader + " isr " + isr;
    }

    private static int await(String[] a) throws Exception {
        String topic = a[2];
        boolean none = a[3].equals("none");
        int leader = none ? -1 : Integer.parseInt(a[3]);
        int minIsr = Integer.parseInt(a[4]);
        int maxIsr = Integer.parseInt(a[5]);
        long deadline = System.currentTimeMillis() + Long.parseLong(a[6]);
        String last = "(no answer)";
        try (Admin admin = admin(a[1])) {
            while (System.currentTimeMillis() < deadline) {
                try {
                    last = describe(admin, topic);
                    String[] f = last.split(" ");
                    int l = Integer.parseInt(f[3]);
                    int isr = f.length > 5 && !f[5].isEmpty() ? f[5].split(",").length : 0;
                    boolean leaderOk = none ? l == -1 : l != -1 && (leader == -1 || l == leader);
                    if (leaderOk && isr >= minIsr && isr <= maxIsr) {
                        say(last);
                        return 0;
                    }
                } catch (Exception e) {
                    last = "describe failed: " + e;
                }
                Thread.sleep(200);
            }
        }
        say("TIMEOUT " + last);
        return 2;
    }

    private static void produce(String[] a) throws Exception {
        AtomicBoolean stop = new AtomicBoolean(false);
        List<Thread> threads = new ArrayList<>();
        List<KafkaProducer<String, String>> producers = new ArrayList<>();
        for (int i = 2; i < a.length; i++) {
            String[] s = a[i].split(":");
            String topic = s[0];
            String acks = s[1];
            int count = Integer.parseInt(s[2]);
            String prefix = s[3];
            long interval = Long.parseLong(s[4]);
            Properties p = new Properties();
            p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, a[1]);
            p.put(ProducerConfig.ACKS_CONFIG, acks);
            // Idempotence needs acks=all; the other settings must be testable as they are.
            p.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, Boolean.toString(acks.equals("all")));
            p.put(ProducerConfig.MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION, "1");
            p.put(ProducerConfig.LINGER_MS_CONFIG, "0");
            p.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
            p.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, "20000");
            p.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, "10000");
            p.put(ProducerConfig.RETRY_BACKOFF_MS_CONFIG, "100");
            p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
            p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
            KafkaProducer<String, String> producer = new KafkaProducer<>(p);
            producers.add(producer);
            Thread t = new Thread(() -> {
                for (int n = 0; n < count && !stop.get(); n++) {
                    String key = String.format("%s-%06d", prefix, n);
                    try {
                        producer.send(new ProducerRecord<>(topic, 0, key, key + "-value"),
                                (md, err) -> {
                                    if (err == null) {
                                        say("ACK " + topic + " " + key + " " + md.partition()
                                                + " " + (md.hasOffset() ? md.offset() : -1));
                                    } else {
                                        say("ERR " + topic + " " + key + " "
                                                + err.getClass().getSimpleName());
                                    }
                                });
                    } catch (Exception e) {
                        say("ERR " + topic + " " + key + " " + e.getClass().getSimpleName());
                    }
                    if (interval > 0) {
                        try {
                            Thread.sleep(interval);
                        } catch (InterruptedException e) {
                            return;
                        }
                    }
                }
            });
            threads.add(t);
        }
        CountDownLatch finished = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            stop.set(true);
            try {
                finished.await();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }));
        threads.forEach(Thread::start);
        for (Thread t : threads) {
            t.join();
        }
        // Records still unanswered fail within the close timeout: they are not acknowledged.
        for (KafkaProducer<String, String> producer : producers) {
            producer.close(Duration.ofSeconds(stop.get() ? 5 : 30));
        }
        say("DONE");
        finished.countDown();
    }

    private static void consume(String[] a) throws Exception {
        String topic = a[2];
        long deadline = System.currentTimeMillis() + Long.parseLong(a[3]);
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, a[1]);
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "30000");
        TopicPartition tp = new TopicPartition(topic, 0);
        try (KafkaConsumer<String, String> c = new KafkaConsumer<>(p)) {
            c.assign(Collections.singletonList(tp));
            c.seekToBeginning(Collections.singletonList(tp));
            long end = c.endOffsets(Collections.singletonList(tp)).get(tp);
            while (c.position(tp) < end) {
                if (System.currentTimeMillis() > deadline) {
                    say("TIMEOUT at " + c.position(tp) + " of " + end);
                    System.exit(2);
                }
                for (ConsumerRecord<String, String> r : c.poll(Duration.ofMillis(500))) {
                    say("REC " + topic + " " + r.key() + " " + r.partition() + " " + r.offset());
                }
            }
            say("END " + topic + " 0 " + end);
        }
    }
}
