DROP TABLE consumer_offsets;
DROP TABLE messages;
DROP TABLE memberships;
DROP TABLE rooms;
DROP TABLE users;
